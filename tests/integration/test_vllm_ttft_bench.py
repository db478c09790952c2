"""``benchmarks/bench_vllm_ttft.py`` on a real vLLM, at its smallest settings.

No speed is asserted (that is what the benchmark prints): the test checks that the entry point
runs, that the JSON and the table have the rows asked for, that a hit row loaded tokens from the
connector, and that the disk rows carry both bandwidths (a verdict on the cold-page-cache one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lmcache_native.bench import vllm_ttft

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vllm_ttft.py"


def test_bad_tier_or_mode_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        vllm_ttft.parse_args(["--tiers", "cpu,tape"])
    assert "--tiers: choose from cpu, disk, disk-warm, redis" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vllm_ttft.parse_args(["--modes", "eager"])
    assert "--modes: choose from sync, async, layerwise" in capsys.readouterr().err


def test_quick_keeps_a_smoke_run_small() -> None:
    args = vllm_ttft.parse_args(["--quick"])
    assert (args.repeat, args.prompt_tokens, args.concurrency) == (1, 256, [1, 4])
    assert (args.miss_repeat, args.mixed_concurrency) == (1, [4])
    assert args.tiers == ["cpu", "disk"]


@pytest.mark.vllm
@pytest.mark.slow
def test_entry_point_runs_a_disk_tier_in_sync_and_async_mode(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    out = tmp_path / "ttft.json"
    cmd = [sys.executable, str(SCRIPT), "--model", "tiny", "--prompt-tokens", "256"]
    cmd += ["--chunk-size", "128", "--repeat", "1", "--concurrency", "1"]
    cmd += ["--tiers", "disk,disk-warm"]
    cmd += ["--modes", "sync,async", "--baselines", "recompute", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["tier"], r["conc"]) for r in rows] == [
        ("recompute", "-", 1),
        ("sync", "miss (store)", 1),
        ("sync", "disk", 1),
        ("sync", "disk-warm", 1),
        ("async", "miss (store)", 1),
        ("async", "disk", 1),
        ("async", "disk-warm", 1),
    ]
    for r in rows:
        assert r["ttft_ms"] > 0, r
    hits = [r for r in rows if r["tier"].startswith("disk")]
    for r in hits:  # loaded by the connector, both bandwidths; a verdict on the device reads only
        assert r["loaded"] > 0, r
        assert r["cached"] >= 128, r
        assert r["load_GBps"] > 0, r
        assert r["raw_GBps"] > 0, r
        assert r["met"] in (("yes", "no") if r["tier"] == "disk" else ("-",)), r
    assert rows[0]["loaded"] == rows[0]["cached"] == 0
    assert "| mode" in proc.stdout
    assert "load/raw" in proc.stdout
