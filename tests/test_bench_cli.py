"""``lmcache-native bench``: one table, ``--json`` and ``--plot`` from every benchmark.

No speed is asserted here (that is what benchmarks/ is for); the tests check that every
benchmark ran, that each row carries our figure, the same-run baseline and limit and their
ratios, that the ratios are the figures' quotients, and that the plot is a valid PNG.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from lmcache_native.bench import runner
from lmcache_native.bench._util import PRESETS
from lmcache_native.bench.scripts import adapt_copy, adapt_engine

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"


def _cli() -> list[str]:
    """The installed ``lmcache-native`` entry point (else ``python -m lmcache_native.cli``)."""
    exe = Path(sys.executable).with_name("lmcache-native")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lmcache_native.cli"]


def _assert_png(path: Path) -> tuple[int, int]:
    """Checks the PNG signature, the IHDR chunk (with its CRC) and the IEND trailer."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc, "IHDR CRC mismatch"
    width, height = struct.unpack(">II", body[:8])
    assert data.endswith(b"IEND\xaeB`\x82"), "no IEND chunk at the end"
    return width, height


def _assert_row_figures(row: dict[str, Any], *, need_limit: bool) -> None:
    for key in ("ours", "baseline", "ours/base"):
        assert isinstance(row[key], float) and row[key] > 0 and math.isfinite(row[key]), (key, row)
    assert row["ours/base"] == pytest.approx(row["ours"] / row["baseline"], rel=1e-6)
    if need_limit:
        for key in ("limit", "ours/limit"):
            assert isinstance(row[key], float) and row[key] > 0, (key, row)
        assert row["ours/limit"] == pytest.approx(row["ours"] / row["limit"], rel=1e-6)
    for key in ("ours_name", "baseline_name", "limit_name"):
        assert isinstance(row[key], str) and row[key]


def test_cli_quick_runs_every_script_and_writes_json_and_png(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    cmd = [*_cli(), "bench", "--quick", "--bench-dir", str(BENCH_DIR), "--json", str(out)]
    cmd += ["--plot", str(png), "--no-progress"]
    proc = subprocess.run(
        [*cmd, "--timeout", "240"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "scripts" and data["errors"] == []
    assert data["command"].startswith("lmcache-native bench --quick")
    assert data["machine"]["cpu_count"] >= 1
    rows = data["rows"]
    assert {r["bench"] for r in rows} == {"copy", "md5", "slot", "engine"}
    copy = {(r["layout"], r["dir"]) for r in rows if r["bench"] == "copy"}
    assert copy == {(lay, d) for lay in ("flash_attn", "vllm_cpu") for d in ("gather", "scatter")}
    assert {(r["shape"], r["form"]) for r in rows if r["bench"] == "slot"} == {
        (shape, form) for shape in ("blocks", "mixed", "singles") for form in ("list", "table")
    }
    assert {r["op"] for r in rows if r["bench"] == "engine"} == {"store", "retrieve", "check"}
    for r in rows:
        # The slot script times no limit and the engine's check has none (kernel vs kernel).
        has_limit = r["bench"] in ("copy", "md5") or r.get("op") in ("store", "retrieve")
        _assert_row_figures(r, need_limit=has_limit)
        assert r["met"] == "-", "a --quick (tiny) run must not judge the issue's goals"
        if r["bench"] == "copy":
            assert r["tokens"] == 256 and r["block"] == 16
    # Every script ran once per job and its own JSON is kept beside the combined rows.
    assert [s["returncode"] for s in data["sources"]] == [0] * len(data["sources"])
    assert {s["bench"] for s in data["sources"]} == {"copy", "md5", "slot", "engine"}
    assert sum(len(s["result"]["rows"]) for s in data["sources"]) == len(rows)
    # One printed table holds every row.
    assert "| bench" in proc.stdout and "ours/limit" in proc.stdout
    for r in rows:
        assert r["case"] in proc.stdout
    width, height = _assert_png(png)
    assert width > 200 and height > 200


def test_builtin_set_runs_in_process_with_baseline_and_limit(tmp_path: Path) -> None:
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = runner.main(
        ["--quick", "--mode", "builtin", "--slots", "3000", "--json", str(out)]
        + ["--plot", str(png), "--no-progress"]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "builtin" and data["errors"] == [] and data["sources"] == []
    rows = data["rows"]
    assert [r["bench"] for r in rows] == ["copy"] * 4 + ["md5"] + ["slot"] * 6
    # Each slot shape is timed compressed to the Python list and to the int64 run table.
    assert [r["case"] for r in rows if r["bench"] == "slot"] == [
        f"parse+compress{form} {shape}"
        for shape in ("blocks", "mixed", "singles")
        for form in ("", "->table")
    ]
    for r in rows:
        _assert_row_figures(r, need_limit=True)
    assert {r["case"] for r in rows if r["bench"] == "copy"} == {
        "flash_attn gather",
        "flash_attn scatter",
        "vllm_cpu gather",
        "vllm_cpu scatter",
    }
    _assert_png(png)


def test_a_bench_dir_without_the_scripts_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "common.py").write_text("")
    rc = runner.main(["--quick", "--bench-dir", str(tmp_path), "--no-progress"])
    assert rc == 2
    assert "no benchmarks/ folder" in capsys.readouterr().err


def test_a_bad_option_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--only", "copy,nope"])
    assert exc.value.code == 2


def test_goals_are_judged_only_in_the_issue_scope() -> None:
    def copy_row(preset: str, tokens: int, base: float, limit: float) -> dict[str, Any]:
        return adapt_copy(
            {
                "layout": "flash_attn",
                "dir": "gather",
                "tokens": tokens,
                "block": 16,
                "MB": 1.0,
                "ours_GBps": 10.0,
                "baseline_GBps": 10.0 / base,
                "limit_GBps": 10.0 / limit,
                "ours/base": base,
                "ours/limit": limit,
                "preset": {"name": preset},
            },
            "cpu",
        )

    assert copy_row("llama3-8b", 8192, 5.0, 0.8)["met"] == "yes"
    assert copy_row("llama3-8b", 8192, 5.0, 0.7)["met"] == "no"
    assert copy_row("llama3-8b", 8192, 3.9, 0.9)["met"] == "no"
    assert copy_row("tiny", 8192, 5.0, 0.8)["met"] == "-"
    assert copy_row("llama3-8b", 256, 5.0, 0.8)["met"] == "-"
    engine = {
        "tier": "cpu",
        "op": "retrieve",
        "engine_GB/s": 8.0,
        "raw_GB/s": 10.0,
        "limit_GB/s": 20.0,
        "engine_ms": 1.0,
        "tokens": 8192,
        "preset": {
            "name": "llama3-8b",
            "num_layers": 32,
            "num_kv_heads": 8,
            "head_size": 128,
            "dtype": "bfloat16",
        },
    }
    row = adapt_engine(engine, "cpu")
    assert row["met"] == "yes" and row["ours/base"] == pytest.approx(0.8)
    assert row["MB"] == pytest.approx(8192 * 2 * 32 * 8 * 128 * 2 / 1e6)
    assert adapt_engine({**engine, "engine_GB/s": 7.0}, "cpu")["met"] == "no"


@pytest.mark.skipif(not (BENCH_DIR / "common.py").is_file(), reason="no benchmarks/common.py")
def test_builtin_presets_match_the_benchmark_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("_bench_common", BENCH_DIR / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, common)  # dataclasses look their module up
    spec.loader.exec_module(common)
    assert set(PRESETS) == set(common.PRESETS)
    for name, p in PRESETS.items():
        q = common.PRESETS[name]
        assert (p.num_layers, p.num_kv_heads, p.head_size, p.block_size, p.mla) == (
            q.num_layers,
            q.num_kv_heads,
            q.head_size,
            q.block_size,
            q.mla,
        ), name
        assert str(q.dtype) == f"torch.{p.dtype}", name


_FAKE_SCRIPT = """
import json, sys
args = sys.argv[1:]
out = args[args.index("--json") + 1]
if {fail!r}:
    print("fake failure: out of bananas", file=sys.stderr)
    sys.exit(3)
print("  progress line", file=sys.stderr)
json.dump({{"benchmark": "fake", "args": {{"tokens": 4096}}, "rows": {rows!r}}}, open(out, "w"))
"""


def test_a_failing_script_is_reported_and_the_others_still_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmcache_native.bench.scripts import SCRIPTS

    copy_rows = [
        {
            "layout": "flash_attn",
            "dir": "gather",
            "tokens": 4096,
            "block": 16,
            "MB": 2.0,
            "ours_GBps": 30.0,
            "baseline_GBps": 6.0,
            "limit_GBps": 40.0,
            "ours/base": 5.0,
            "ours/limit": 0.75,
            "preset": {"name": "llama3-8b"},
        }
    ]
    slot_rows = [
        {"shape": "blocks", "slots": 1000, "text_MB": 0.01, "ours_ms": 1.0, "baseline_ms": 50.0},
        {
            "shape": "blocks",
            "form": "table",
            "slots": 1000,
            "text_MB": 0.01,
            "ours_ms": 0.5,
            "baseline_ms": 50.0,
        },
    ]
    rows_of = {"copy": copy_rows, "slot": slot_rows, "engine": [], "md5": []}
    (tmp_path / "common.py").write_text("")
    for bench, name in SCRIPTS.items():
        text = _FAKE_SCRIPT.format(fail=bench == "md5", rows=rows_of[bench])
        (tmp_path / name).write_text(text)
    out = tmp_path / "out.json"
    argv = ["--bench-dir", str(tmp_path), "--only", "copy,md5,slot", "--layouts", "flash_attn"]
    rc = runner.main([*argv, "--block-sizes", "16", "--json", str(out), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "out of bananas" in err and "bench_kv_chunk_md5.py" in err
    data = json.loads(out.read_text())
    assert len(data["errors"]) == 1 and "exit 3" in data["errors"][0]
    assert [r["bench"] for r in data["rows"]] == ["copy", "slot", "slot"]
    copy, slot, slot_table = data["rows"]
    assert slot["case"] == "parse+compress blocks" and slot["form"] == "list"
    assert slot_table["case"] == "parse+compress->table blocks" and slot_table["form"] == "table"
    assert slot_table["ours/base"] == pytest.approx(100.0)
    assert copy["met"] == "yes" and copy["ours/base"] == pytest.approx(5.0)
    # Slot bandwidth: (text read + int64 slots written) per second; the ratio is kept.
    assert slot["ours"] == pytest.approx((0.01e6 + 8000) / 1e-3 / 1e9)
    assert slot["ours/base"] == pytest.approx(50.0) and slot["limit"] is None
    # The job arguments reach the scripts.
    copy_src = next(s for s in data["sources"] if s["bench"] == "copy")
    assert "--layouts flash_attn --block-sizes 16" in copy_src["command"]
    assert "--tokens 1024,8192" in copy_src["command"]


def test_interleaved_settles_before_every_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round-robin order, warm-up unpaused, and a settle pause before each timed sample."""
    from lmcache_native.bench import _util

    events: list[str] = []
    monkeypatch.setattr(_util, "settle", lambda seconds=0.0: events.append("settle"))
    medians = _util.interleaved(
        {"a": lambda: events.append("a"), "b": lambda: events.append("b")}, warmup=1, repeat=2
    )
    assert events == ["a", "b"] + ["settle", "a", "settle", "b"] * 2
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_benchmarks_time_interleaved_settles_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/common.time_interleaved pauses before each CPU sample, never on CUDA."""
    from lmcache_native.bench import _util

    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import common  # benchmarks/common.py

    calls: list[str] = []
    monkeypatch.setattr(_util, "settle", lambda seconds=0.0: calls.append("settle"))
    monkeypatch.setattr(common, "synchronize", lambda device: None)
    out = common.time_interleaved({"x": lambda: calls.append("x")}, warmup=0, repeat=3)
    assert calls == ["settle", "x"] * 3
    assert len(out["x"].samples) == 3
    calls.clear()
    common.time_interleaved({"x": lambda: calls.append("x")}, device="cuda", warmup=0, repeat=2)
    assert calls == ["x", "x"]


def test_settle_sleeps() -> None:
    """settle() pauses for the given time (the pause is what lets spinning pools sleep)."""
    import time

    from lmcache_native.bench._util import settle

    t0 = time.perf_counter()
    settle(0.03)
    assert time.perf_counter() - t0 >= 0.03


def test_time_interleaved_samples_until_min_time_within_max_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Short cases get more rounds (every function ``min_time`` of samples), never past the cap."""
    import time

    from lmcache_native.bench import _util

    monkeypatch.setattr(_util, "settle", lambda seconds=0.0: None)
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import common  # benchmarks/common.py

    fns = {"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.004)}
    out = common.time_interleaved(fns, warmup=0, repeat=2, min_time=0.03)
    n = len(out["fast"].samples)
    assert n == len(out["slow"].samples) > 2  # round-robin: one sample of each per round
    assert sum(out["fast"].samples) >= 0.03  # the faster one decides when to stop
    assert sum(out["fast"].samples[:-1]) < 0.03  # and it stopped at the first round past it
    capped = common.time_interleaved(fns, warmup=0, repeat=2, min_time=10.0, max_rounds=5)
    assert len(capped["slow"].samples) == 5
    plain = common.time_interleaved(fns, warmup=0, repeat=3)
    assert len(plain["fast"].samples) == 3


def test_runner_gives_min_time_to_the_copy_sweep_only() -> None:
    import argparse

    def plan(argv: list[str]) -> list[Any]:
        parser = argparse.ArgumentParser()
        runner.add_arguments(parser)
        args = parser.parse_args(argv)
        runner._resolve(args)
        runner._check(args, parser)
        return runner.plan_jobs(args)

    jobs = plan(["--only", "copy,md5,slot", "--min-time", "0.5"])
    assert {j.bench for j in jobs} == {"copy", "md5", "slot"}
    for job in jobs:
        has = "--min-time" in job.args
        assert has == (job.bench == "copy"), job
        if has:
            assert job.args[job.args.index("--min-time") + 1] == "0.5"
    default = next(j for j in plan(["--only", "copy"]) if j.bench == "copy")
    assert default.args[default.args.index("--min-time") + 1] == "0.3"
    quick = next(j for j in plan(["--quick", "--only", "copy"]) if j.bench == "copy")
    assert quick.args[quick.args.index("--min-time") + 1] == "0.0"
    with pytest.raises(SystemExit):
        plan(["--min-time", "-1"])
