"""benchmarks/gpu: the prepared GPU script's checks and its summary table (no GPU needed).

The GPU run itself needs an NVIDIA card; here the script must refuse a machine without one
with a clear message, and summarize.py must turn result files into one table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / "benchmarks" / "gpu"


def test_run_sh_refuses_a_machine_without_nvidia_smi(tmp_path: Path) -> None:
    # A PATH with bash and the basic tools but no nvidia-smi.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "date", "dirname", "printf"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON")}
    env["PATH"] = str(bindir)
    proc = subprocess.run(
        [str(bindir / "bash"), str(GPU_DIR / "run.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "nvidia-smi not found" in proc.stderr
    assert "=== checks" in proc.stdout  # the step banner came first; nothing was built


def test_run_sh_and_wheels_sh_parse() -> None:
    for script in ("run.sh", "wheels.sh"):
        proc = subprocess.run(
            ["bash", "-n", str(GPU_DIR / script)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr


def _result(path: Path, rows: list[dict[str, object]]) -> None:
    machine = {"gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "torch": "2.11", "commit": "abc" * 5}
    path.write_text(json.dumps({"machine": machine, "rows": rows}), encoding="utf-8")


def test_summarize_prints_one_table_of_every_result(tmp_path: Path) -> None:
    _result(
        tmp_path / "copy_host.json",
        [
            {
                "layout": "flash_attn",
                "dir": "gather",
                "tokens": 8192,
                "ours/memcpy": 0.97,
                "preset": {"name": "llama3-8b"},
                "ours_GBps": 51.5,
            },
        ],
    )
    _result(tmp_path / "kv_chunk_md5.json", [{"layout": "flash_attn", "ours/hashlib": 88.0}])
    (tmp_path / "cuda_tests.log").write_text("not JSON, ignored")
    proc = subprocess.run(
        [sys.executable, str(GPU_DIR / "summarize.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("GPU: NVIDIA H100 80GB HBM3;")
    header = next(line for line in out.splitlines() if line.startswith("|") and "bench" in line)
    for col in ("bench", "layout", "dir", "tokens", "ours/memcpy", "ours_GBps", "ours/hashlib"):
        assert col in header
    assert "preset" not in header  # nested fields are left out
    body = [line for line in out.splitlines() if line.startswith("|")][2:]
    assert len(body) == 2
    for row, cells in zip(
        body, (("copy_host", "0.97", "51.5"), ("kv_chunk_md5", "88")), strict=True
    ):
        for cell in cells:
            assert cell in row


@pytest.mark.parametrize("files", [0, 1])
def test_summarize_without_results_is_a_clear_error(tmp_path: Path, files: int) -> None:
    if files:
        (tmp_path / "cuda_tests.log").write_text("x")
    proc = subprocess.run(
        [sys.executable, str(GPU_DIR / "summarize.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"no benchmark results in {tmp_path}" in proc.stderr
