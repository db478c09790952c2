"""``lmcache-native bench`` and the ``benchmarks/bench_*.py`` entry points.

No speed is asserted here (that is what the benchmarks print); the tests check that every
benchmark ran, that each row carries our figure, the same-run baseline and limit and their
ratios, that the ratios are the figures' quotients, that every row a goal covers has a verdict,
that ``--quick`` keeps the sizes, and that the plot is a valid PNG.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from lmcache_native.bench import _util, engine, kv_chunk_md5, paged_kv_copy, runner

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
# Small enough for a test on two shared cores; the goals' scopes still cover the copy and MD5.
SMALL = ["--tokens", "1024", "--block-sizes", "16", "--slots", "20000", "--engine-tokens", "1024"]


def _cli() -> list[str]:
    """The installed ``lmcache-native`` entry point (else ``python -m lmcache_native.cli``)."""
    exe = Path(sys.executable).with_name("lmcache-native")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lmcache_native.cli"]


def _assert_png(path: Path) -> tuple[int, int]:
    """Checks the PNG signature, the IHDR chunk (with its CRC) and the IEND trailer."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc, "IHDR CRC mismatch"
    width, height = struct.unpack(">II", body[:8])
    assert data.endswith(b"IEND\xaeB`\x82"), "no IEND chunk at the end"
    return width, height


def _assert_row_figures(row: dict[str, Any]) -> None:
    for key in ("ours", "baseline", "limit", "ours/base", "ours/limit"):
        assert isinstance(row[key], float), (key, row)
        assert row[key] > 0, (key, row)
        assert math.isfinite(row[key]), (key, row)
    assert row["ours/base"] == pytest.approx(row["ours"] / row["baseline"], rel=1e-6)
    assert row["ours/limit"] == pytest.approx(row["ours"] / row["limit"], rel=1e-6)
    for key in ("ours_name", "baseline_name", "limit_name"):
        assert isinstance(row[key], str)
        assert row[key] not in ("", "-")
    # Every row a goal covers shows its verdict; a row without a goal shows none.
    assert row["met"] in (("yes", "no") if row["goal"] != "-" else ("-",)), row


def test_cli_quick_runs_every_benchmark_and_writes_json_and_png(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    cmd = [*_cli(), "bench", "--quick", *SMALL, "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(
        [*cmd, "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == []
    assert data["command"].startswith("lmcache-native bench --quick")
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["md5_isa"]
    assert (data["settings"]["repeat"], data["settings"]["warmup"]) == (3, 1)
    rows = data["rows"]
    assert {r["bench"] for r in rows} == {"copy", "md5", "slot", "engine"}
    copy = {(r["layout"], r["dir"]) for r in rows if r["bench"] == "copy"}
    assert copy == {(lay, d) for lay in ("flash_attn", "vllm_cpu") for d in ("gather", "scatter")}
    assert {(r["shape"], r["form"]) for r in rows if r["bench"] == "slot"} == {
        (shape, form) for shape in ("blocks", "mixed", "singles") for form in ("list", "table")
    }
    assert {r["op"] for r in rows if r["bench"] == "engine"} == {"store", "retrieve", "check"}
    for r in rows:
        _assert_row_figures(r)
        if r["bench"] == "copy":
            assert (r["tokens"], r["block"]) == (1024, 16)
            assert r["MB"] > 100
    # llama3-8b copies at 1K tokens and MD5 are inside their goals' scope: judged.
    assert all(r["goal"] != "-" for r in rows if r["bench"] in ("copy", "md5"))
    # One printed table holds every row, and the summary counts the judged rows.
    assert "| bench" in proc.stdout
    assert "ours/limit" in proc.stdout
    for r in rows:
        assert r["case"] in proc.stdout
    judged = sum(r["goal"] != "-" for r in rows)
    met = sum(r["met"] == "yes" for r in rows)
    assert f"goal met in {met} of {judged} rows with a goal" in proc.stdout
    width, height = _assert_png(png)
    assert min(width, height) > 200


def _resolved(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    args = parser.parse_args(argv)
    runner.resolve(args, parser)
    return args


def test_quick_samples_less_but_measures_the_same_cases() -> None:
    full, quick = _resolved([]), _resolved(["--quick"])
    assert [c[1] for c in runner.plan(full)] == [c[1] for c in runner.plan(quick)]
    assert (
        (quick.preset, quick.tokens, quick.block_sizes, quick.slots)
        == (
            full.preset,
            full.tokens,
            full.block_sizes,
            full.slots,
        )
        == ("llama3-8b", [1024, 8192], [16, 32], 1_000_000)
    )
    assert (full.warmup, full.repeat, full.min_time) == (2, 7, 0.3)
    assert (quick.warmup, quick.repeat, quick.min_time) == (1, 3, 0.0)
    labels = [c[1] for c in runner.plan(full)]
    assert labels[0] == "copy flash_attn b16 1024 tok"
    assert labels[-1] == "engine 8192 tok"
    assert sum(label.startswith("copy ") for label in labels) == 2 * 2 * 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "copy,nope"], "unknown benchmark 'nope'"),
        (["--layouts", "flash_attn,nope"], "unknown layout 'nope'"),
        (["--directions", "sideways"], "unknown direction 'sideways'"),
        (["--tokens", "1k,x"], "not an integer"),
        (["--min-time", "-1"], "--min-time must be in [0, 60]"),
    ],
)
def test_a_bad_option_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failing_case_is_reported_and_the_others_still_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> list[dict[str, object]]:
        raise RuntimeError("out of bananas")

    monkeypatch.setattr(kv_chunk_md5, "run_case", broken)
    out = tmp_path / "out.json"
    argv = ["--quick", "--only", "md5,slot", "--tokens", "256", "--slots", "2000"]
    rc = runner.main([*argv, "--json", str(out), "--no-progress"])
    assert rc == 1
    assert "out of bananas" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert len(data["errors"]) == 1
    assert "md5 256 tok: RuntimeError: out of bananas" in data["errors"][0]
    assert [r["bench"] for r in data["rows"]] == ["slot"] * 6
    for r in data["rows"]:
        _assert_row_figures(r)
        assert r["goal"] == "-"  # 2000 slots: outside the 1M-slot goal


def _copy_row(preset: str, tokens: int, base: float, limit: float) -> dict[str, Any]:
    return paged_kv_copy.combined_row(
        {
            "layout": "flash_attn",
            "dir": "gather",
            "tokens": tokens,
            "block": 16,
            "MB": 1.0,
            "ours_GBps": 10.0,
            "baseline_GBps": 10.0 / base,
            "limit_GBps": 10.0 / limit,
            "preset": {"name": preset},
        },
        "cpu",
    )


def test_goals_are_judged_in_their_scope_and_every_judged_row_has_a_verdict() -> None:
    assert _copy_row("llama3-8b", 8192, 5.0, 0.8)["met"] == "yes"
    assert _copy_row("llama3-8b", 8192, 5.0, 0.7)["met"] == "no"
    assert _copy_row("llama3-8b", 8192, 3.9, 0.9)["met"] == "no"
    for out_of_scope in (_copy_row("tiny", 8192, 5.0, 0.8), _copy_row("llama3-8b", 256, 5, 0.8)):
        assert (out_of_scope["goal"], out_of_scope["met"]) == ("-", "-")
    row = {
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
    got = engine.combined_row(row, "cpu")
    assert got["met"] == "yes"
    assert got["ours/base"] == pytest.approx(0.8)
    assert got["ours/limit"] == pytest.approx(0.4)
    assert got["MB"] == pytest.approx(8192 * 2 * 32 * 8 * 128 * 2 / 1e6)
    assert engine.combined_row({**row, "engine_GB/s": 7.0}, "cpu")["met"] == "no"
    md5 = {"layout": "flash_attn", "isa": "avx512", "tokens": 8192, "preset": {"name": "tiny"}}
    md5 |= {"ours_GBps": 8.0, "hashlib_GBps": 0.8, "limit_GBps": 30.0}
    assert kv_chunk_md5.combined_row(md5, "cpu")["goal"] == "-"
    judged = kv_chunk_md5.combined_row({**md5, "preset": {"name": "llama3-8b"}}, "cpu")
    assert (judged["goal"], judged["met"]) == ("base>=8", "yes")
    assert kv_chunk_md5.combined_row({**md5, "preset": {"name": "llama3-8b"}}, "cuda")["met"] == (
        "no"
    )


SCRIPTS = (
    "bench_paged_kv_copy.py",
    "bench_kv_chunk_md5.py",
    "bench_slot_ranges.py",
    "bench_engine.py",
    "bench_connector_async.py",
    "bench_connector_lookup.py",
    "bench_connector_save.py",
    "bench_vllm_layerwise.py",
    "bench_vllm_ttft.py",
    "run_all.py",
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_scripts_are_thin_entry_points(name: str) -> None:
    """Each script only calls the package's ``main``: the benchmark exists once."""
    tree = ast.parse((BENCH_DIR / name).read_text(encoding="utf-8"))
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert defs == [], f"{name} defines {[d.name for d in defs]}"
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert any((n.module or "").startswith("lmcache_native.bench") for n in imports)


def test_a_script_runs_its_benchmark_from_the_package(tmp_path: Path) -> None:
    out = tmp_path / "slots.json"
    cmd = [sys.executable, str(BENCH_DIR / "bench_slot_ranges.py"), "--slots", "3000"]
    proc = subprocess.run(
        [*cmd, "--shapes", "mixed", "--repeat", "2", "--warmup", "0", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["form"]) for r in rows] == [("mixed", "list"), ("mixed", "table")]
    for r in rows:
        assert r["ours/base"] == pytest.approx(r["baseline_ms"] / r["ours_ms"], rel=1e-6)
        assert r["ours/limit"] == pytest.approx(r["limit_ms"] / r["ours_ms"], rel=1e-6)
    assert "ours/limit" in proc.stdout
    assert "limit_ms" in proc.stdout


def test_time_interleaved_settles_on_cpu_only_and_runs_set_up_untimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round-robin order, warm-up unpaused, a settle pause before each timed CPU sample."""
    events: list[str] = []
    monkeypatch.setattr(_util, "settle", lambda _seconds=0.0: events.append("settle"))
    monkeypatch.setattr(_util, "synchronize", lambda _device: None)
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    out = _util.time_interleaved(fns, warmup=1, repeat=2, before={"b": lambda: events.append("s")})
    assert events == ["a", "s", "b"] + ["settle", "a", "s", "settle", "b"] * 2
    assert set(out) == {"a", "b"}
    assert all(len(t.samples) == 2 for t in out.values())
    events.clear()
    _util.time_interleaved({"x": lambda: events.append("x")}, device="cuda", warmup=0, repeat=2)
    assert events == ["x", "x"]


def test_settle_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """settle() pauses for the given time (the pause is what lets spinning pools sleep)."""
    slept: list[float] = []
    monkeypatch.setattr(_util.time, "sleep", slept.append)
    _util.settle(0.03)
    _util.settle(0.0)
    assert slept == [0.03]


def test_time_interleaved_samples_until_min_time_within_max_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Short cases get more rounds (every function ``min_time`` of samples), never past the cap."""
    monkeypatch.setattr(_util, "settle", lambda _seconds=0.0: None)
    # A fake clock: "fast" takes 1 ms and "slow" 4 ms of it, whatever the machine does.
    now = [0.0]
    monkeypatch.setattr(_util.time, "perf_counter", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    fns = {"fast": lambda: advance(0.001), "slow": lambda: advance(0.004)}
    out = _util.time_interleaved(fns, warmup=0, repeat=2, min_time=0.03)
    n = len(out["fast"].samples)
    assert n == len(out["slow"].samples)  # round-robin: one sample of each per round
    # The faster one decides when to stop: the first round where its samples reach 30 ms.
    assert n == 30
    assert out["fast"].samples == pytest.approx([0.001] * 30)
    assert out["slow"].samples == pytest.approx([0.004] * 30)
    capped = _util.time_interleaved(fns, warmup=0, repeat=2, min_time=10.0, max_rounds=5)
    assert len(capped["slow"].samples) == 5
    plain = _util.time_interleaved(fns, warmup=0, repeat=3)
    assert len(plain["fast"].samples) == 3


def test_connector_async_runs_both_modes_of_every_case(tmp_path: Path) -> None:
    """The smallest run: every case in both modes, with positive forward-thread figures."""
    from lmcache_native.bench import connector_async

    out = tmp_path / "async.json"
    small = ["--tokens", "256", "--layers", "1", "--heads", "1", "--head-size", "16"]
    assert connector_async.main([*small, "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    cases = ("cpu-tier load", "disk-tier load", "save", "save, warm pool")
    assert [(r["case"], r["mode"]) for r in rows] == [
        (c, m) for c in cases for m in ("sync", "async")
    ]
    for r in rows:
        assert r["forward_ms"] > 0
        assert r["done_ms"] >= r["forward_ms"]
        assert r["sync/ours"] == pytest.approx(r["sync_forward_ms"] / r["forward_ms"])
    cpu = [r for r in rows if r["case"] == "cpu-tier load"]
    assert all(r["limit_ms"] > 0 for r in cpu)
    # A save's forward-thread time stands next to a memcpy of the same bytes.
    saves = [r for r in rows if r["case"].startswith("save")]
    assert all(r["limit/forward"] == pytest.approx(r["limit_ms"] / r["forward_ms"]) for r in saves)


def test_vllm_layerwise_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The smallest run: the header line and the three-row table of milliseconds."""
    from lmcache_native.bench import vllm_layerwise

    small = ["--tokens", "256", "--layers", "2", "--heads", "1", "--head-size", "16"]
    assert vllm_layerwise.main([*small, "--dtype", "float32", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("256 tokens x 2 layers, float32, ")
    assert lines[1:3] == ["| path | whole-forward (ms) | layer-wise (ms) |", "|---|---|---|"]
    rows = [ln.split(" | ") for ln in lines[3:]]
    assert [r[0] for r in rows] == [
        "| load: forward may start after",
        "| load: every layer in",
        "| save: copy-out + commit",
    ]
    for r in rows:  # at this size a figure may print as 0.0 ms, never negative
        assert float(r[1]) >= 0
        assert float(r[2].split()[0]) >= 0
    assert rows[0][2].endswith("(layer 0) |")
    assert rows[2][2].split()[1] == "(commit"


def test_vllm_layerwise_rejects_tokens_off_the_block_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lmcache_native.bench import vllm_layerwise

    with pytest.raises(SystemExit) as exc:
        vllm_layerwise.main(["--tokens", "100"])
    assert exc.value.code == 2
    assert "--tokens must be a positive multiple of the block size 32" in capsys.readouterr().err
