"""Runs a source checkout's ``benchmarks/bench_*.py`` as subprocesses and reads their JSON.

Each script is started with ``--json <tmp>``; its rows are turned into combined-table rows
(:func:`lmcache_native.bench._util.make_row`) by one adapter per script. The scripts stay the
single source of truth for their own figures: the runner never re-times anything they report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcache_native.bench._util import all_of, at_least, goal_scope, make_row

SCRIPTS: dict[str, str] = {
    "copy": "bench_paged_kv_copy.py",
    "md5": "bench_kv_chunk_md5.py",
    "slot": "bench_slot_ranges.py",
    "engine": "bench_engine.py",
}


def find_bench_dir(explicit: Path | None = None) -> Path | None:
    """The ``benchmarks/`` folder of a source checkout, or ``None`` for an installed wheel.

    The first of ``explicit``, ``$LMC_BENCH_DIR`` and ``<repo>/benchmarks`` next to the
    package's source (an editable install's ``python/lmcache_native``) that is given decides:
    it must hold ``common.py`` and every script, else the answer is ``None``.
    """
    if explicit is None and os.environ.get("LMC_BENCH_DIR"):
        explicit = Path(os.environ["LMC_BENCH_DIR"])
    if explicit is None:
        import lmcache_native

        explicit = Path(lmcache_native.__file__).resolve().parents[2] / "benchmarks"
    c = Path(explicit)
    if (c / "common.py").is_file() and all((c / s).is_file() for s in SCRIPTS.values()):
        return c.resolve()
    return None


@dataclass
class Job:
    """One subprocess: a script with its arguments.

    Attributes:
        bench: ``copy``, ``md5``, ``slot`` or ``engine``.
        label: progress-bar label.
        args: command-line arguments after the script (without ``--json``).
        result: the script's JSON (``None`` until it ran, or when it failed).
        returncode, seconds, stderr_tail, command: how it went.
    """

    bench: str
    label: str
    args: list[str]
    result: dict[str, Any] | None = None
    returncode: int | None = None
    seconds: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)
    command: str = ""


def run_job(
    job: Job,
    bench_dir: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> Job:
    """Runs ``job``'s script with ``--json`` into a temporary file and loads the result.

    Args:
        job: what to run; filled in with the outcome.
        bench_dir: the checkout's ``benchmarks/`` folder.
        on_line: called with each line the script writes to stderr (its progress lines).
        timeout: seconds before the script is killed (``None``: no limit).
    """
    script = bench_dir / SCRIPTS[job.bench]
    with tempfile.TemporaryDirectory(prefix="lmc-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), *job.args, "--json", str(out)]
        job.command = " ".join(
            [Path(sys.executable).name, f"benchmarks/{SCRIPTS[job.bench]}", *job.args]
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=bench_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        tail: list[str] = []

        def pump_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip()
                tail.append(line)
                del tail[:-40]
                if on_line is not None and line.strip():
                    on_line(line.strip())

        stdout_lines: list[str] = []

        def pump_stdout() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                stdout_lines.append(line.rstrip())
                del stdout_lines[:-40]

        # NOTE: both pipes are drained by threads (communicate() would race the stderr reader).
        readers = [
            threading.Thread(target=pump_stderr, daemon=True),
            threading.Thread(target=pump_stdout, daemon=True),
        ]
        for r in readers:
            r.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            tail.append(f"killed after {timeout} s (--timeout)")
        for r in readers:
            r.join(timeout=5)
        job.seconds = time.perf_counter() - t0
        job.returncode = proc.returncode
        job.stderr_tail = tail[-20:] or stdout_lines[-20:]
        if proc.returncode == 0 and out.is_file():
            job.result = json.loads(out.read_text(encoding="utf-8"))
    return job


# --- adapters: a script's rows -> combined rows ---------------------------------------------------


def _f(v: Any) -> float | None:
    """A JSON number as float; ``None`` for missing, NaN or non-numbers."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return None if v != v else v


def _preset(row: dict[str, Any]) -> dict[str, Any]:
    p = row.get("preset")
    return p if isinstance(p, dict) else {}


def adapt_copy(row: dict[str, Any], device: str) -> dict[str, Any]:
    """``bench_paged_kv_copy.py`` row -> combined row (GB/s of bytes read + written)."""
    cuda = device == "cuda"
    direction = str(row.get("dir"))
    goal = (
        ("memcpy>=0.9, base>=2", all_of(at_least("ours/memcpy", 0.9), at_least("ours/base", 2)))
        if cuda
        else (
            "base>=4, limit>=0.75",
            all_of(at_least("ours/base", 4), at_least("ours/limit", 0.75)),
        )
    )
    extra: dict[str, Any] = {"layout": row.get("layout"), "dir": direction}
    if _f(row.get("memcpy_GBps")) is not None:
        extra["memcpy"] = _f(row["memcpy_GBps"])
        extra["ours/memcpy"] = _f(row.get("ours/memcpy"))
    extra["preset"] = _preset(row).get("name")
    return make_row(
        "copy",
        f"{row.get('layout')} {direction}",
        ours=_f(row.get("ours_GBps")),
        baseline=_f(row.get("baseline_GBps")),
        limit=_f(row.get("limit_GBps")),
        names=(
            "paged_kv_gather + scatter" if direction == "both" else f"paged_kv_{direction}",
            "torch indexing per layer",
            str(row.get("limit", "contiguous copy")),
        ),
        tokens=row.get("tokens"),
        block=row.get("block"),
        payload_mb=_f(row.get("MB")),
        ours_ms=_f(row.get("ours_ms")),
        goal=goal,
        in_scope=goal_scope("copy", extra["preset"], row.get("tokens")),
        **extra,
    )


def adapt_md5(row: dict[str, Any], device: str) -> dict[str, Any]:
    """``bench_kv_chunk_md5.py`` row -> combined row (hash GB/s = bytes hashed / s)."""
    need = 50 if device == "cuda" else 8
    return make_row(
        "md5",
        f"{row.get('layout')} {row.get('isa')}",
        ours=_f(row.get("ours_GBps")),
        baseline=_f(row.get("hashlib_GBps")),
        limit=_f(row.get("limit_GBps")),
        names=("kv_chunk_md5", "hashlib.md5, 1 thread", "contiguous copy"),
        tokens=row.get("tokens"),
        block=_preset(row).get("block_size"),
        payload_mb=_f(row.get("MB")),
        ours_ms=_f(row.get("ours_ms")),
        goal=(f"base>={need}", at_least("ours/base", need)),
        in_scope=goal_scope("md5", _preset(row).get("name"), row.get("tokens")),
        layout=row.get("layout"),
        isa=row.get("isa"),
        xxh3=_f(row.get("xxh3_GBps")),
        preset=_preset(row).get("name"),
    )


def adapt_slot(row: dict[str, Any], device: str) -> dict[str, Any]:
    """``bench_slot_ranges.py`` row -> combined row.

    The script reports milliseconds; bandwidth here is (text bytes read + int64 slots
    written) / s, so that every row has one unit. The script times no limit.
    """
    slots = int(row.get("slots") or 0)
    text_mb = _f(row.get("text_MB")) or 0.0
    moved = text_mb * 1e6 + 8 * slots
    ours_ms, base_ms = _f(row.get("ours_ms")), _f(row.get("baseline_ms"))
    table = row.get("form") == "table"
    return make_row(
        "slot",
        f"parse+compress{'->table' if table else ''} {row.get('shape')}",
        ours=moved / ours_ms / 1e6 if ours_ms else None,
        baseline=moved / base_ms / 1e6 if base_ms else None,
        limit=None,
        names=(
            f"parse_slot_mapping + compress_slot_{'ranges' if table else 'mapping'}",
            "pure Python (reference.py)",
            "-",
        ),
        tokens=slots,
        payload_mb=moved / 1e6,
        ours_ms=ours_ms,
        goal=("base>=30", at_least("ours/base", 30)),
        in_scope=goal_scope("slot", None, slots),
        shape=row.get("shape"),
        form="table" if table else "list",
    )


def adapt_engine(row: dict[str, Any], device: str) -> dict[str, Any]:
    """``bench_engine.py`` row -> combined row: ours = the engine, baseline = the raw kernel."""
    op = str(row.get("op"))
    need = 1 / 1.2 if op == "check" else 1 / 1.3
    raw = {"store": "paged_kv_gather", "retrieve": "paged_kv_scatter", "check": "kv_chunk_md5"}
    tier = row.get("tier")
    p = _preset(row)
    tokens = row.get("tokens") if isinstance(row.get("tokens"), int) else None
    elem = {"bfloat16": 2, "float16": 2, "float32": 4}.get(str(p.get("dtype")), 0)
    size = (1 if p.get("mla") else 2) * elem
    for key in ("num_layers", "num_kv_heads", "head_size"):
        size *= int(p.get(key, 0))
    return make_row(
        "engine",
        f"{op} ({tier} tier)" if tier not in (None, "-") else op,
        ours=_f(row.get("engine_GB/s")),
        baseline=_f(row.get("raw_GB/s")),
        limit=_f(row.get("limit_GB/s")),
        names=(f"CacheEngine.{op}", f"raw {raw.get(op, 'kernel')}", "contiguous copy"),
        tokens=tokens,
        block=p.get("block_size"),
        payload_mb=tokens * size / 1e6 if tokens and size else None,
        ours_ms=_f(row.get("engine_ms")),
        goal=(f"base>={need:.2f} (<= {1 / need:.1f}x raw time)", at_least("ours/base", need)),
        in_scope=goal_scope("engine", p.get("name"), tokens),
        op=op,
        tier=tier,
        preset=_preset(row).get("name"),
    )


ADAPTERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "copy": adapt_copy,
    "md5": adapt_md5,
    "slot": adapt_slot,
    "engine": adapt_engine,
}


def rows_of(job: Job, device: str) -> list[dict[str, Any]]:
    """Combined rows of a finished job (empty when it failed)."""
    if job.result is None:
        return []
    src = [dict(r) for r in job.result.get("rows", [])]
    if job.bench == "engine":  # the engine's rows leave the request size to its args
        tokens = job.result.get("args", {}).get("tokens")
        for r in src:
            r.setdefault("tokens", tokens)
    return [ADAPTERS[job.bench](r, device) for r in src]
