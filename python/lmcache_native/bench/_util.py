"""Shared pieces of the bench runner: presets, round-robin timing, machine info, row schema.

A *row* of the combined table is a plain dict with these keys (``None`` where not measured):

``bench``, ``case``, ``tokens``, ``block``, ``MB`` (payload), ``ours``, ``baseline``, ``limit``
(GB/s), ``ours/base``, ``ours/limit`` (ratios; above 1 we are faster), ``ours_ms``, ``goal``
(the issue's target, text), ``met`` (``"yes"``/``"no"``/``"-"``), ``load`` (the 1-minute load
average when the case started: on a shared machine it says how much the figures can be trusted),
``ours_name``,
``baseline_name``, ``limit_name`` (what was timed), and free-form extras.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Benchmarks the runner knows, in table order.
BENCHES: tuple[str, ...] = ("copy", "md5", "slot", "engine")


@dataclass(frozen=True)
class Preset:
    """KV geometry of one model per worker (same values as ``benchmarks/common.py``).

    Attributes:
        name: preset name on the command line.
        num_layers: attention layers.
        num_kv_heads: KV heads (1 for MLA).
        head_size: elements per head.
        dtype: ``torch`` dtype name (``"bfloat16"``, ``"float16"``).
        block_size: tokens per paged block.
        mla: MLA cache (one latent row per token, no K/V axis).
    """

    name: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    dtype: str
    block_size: int = 16
    mla: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", 2, 2, 64, "float16"),
        Preset("llama3-8b", 32, 8, 128, "bfloat16"),
        Preset("llama3-70b-tp8", 80, 1, 128, "bfloat16"),
        Preset("mistral-7b", 32, 8, 128, "float16"),
        Preset("qwen2.5-7b", 28, 4, 128, "bfloat16"),
        Preset("deepseek-v3-mla", 61, 1, 576, "bfloat16", block_size=64, mla=True),
    )
}


#: Pause before each CPU sample so every contender starts with idle threads (see ``settle``).
SETTLE_S = 0.02


def settle(seconds: float = SETTLE_S) -> None:
    """Sleeps long enough for thread pools that spin after their work to fall asleep.

    torch's OpenMP workers busy-wait for several milliseconds after each parallel region. A
    function timed right after a torch op then shares the cores with those spinning workers
    (measured on the 2-core machine: a 1K-token ``vllm_cpu`` scatter took 12.5 ms right after a
    torch copy, 8.7 ms after a 10 ms pause), while a torch op timed after a torch op finds
    them awake and gains. A pause before every sample gives each function the same start.
    """
    if seconds > 0:
        time.sleep(seconds)


def interleaved(
    fns: dict[str, Callable[[], object]], *, warmup: int, repeat: int
) -> dict[str, float]:
    """Median seconds of each function, sampled round-robin (one of each per round).

    On a shared machine the load drifts; taking one sample of every variant per round spreads
    that drift evenly over them, so their ratios stay meaningful when absolute times do not.
    Each sample starts after ``settle()``, so no function inherits another's spinning threads.
    """
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            settle()
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in samples.items()}


def gbps(num_bytes: float, seconds: float) -> float:
    """GB/s (1e9 bytes per second)."""
    return float(num_bytes) / seconds / 1e9 if seconds > 0 else float("inf")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or ``None`` when either is missing or ``b`` is not positive."""
    if a is None or b is None or not b > 0 or a != a:
        return None
    return a / b


def parse_int_list(text: str) -> list[int]:
    """``"1024,8k"`` -> ``[1024, 8192]`` (a ``k`` suffix multiplies by 1024).

    Raises:
        ValueError: an item is not an integer, or the list is empty.
    """
    out: list[int] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item:
            mult = 1024 if item.endswith("k") else 1
            out.append(int(item.removesuffix("k")) * mult)
    if not out:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}")
    return out


def parse_str_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, versions and the native build's flags, for the JSON and the README."""
    import torch

    import lmcache_native
    from lmcache_native import _native

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "native_threads": _native.num_threads(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmcache_native": lmcache_native.__version__,
        "commit": lmcache_native.COMMIT_ID,
        "has_cuda_build": bool(lmcache_native.HAS_CUDA),
    }
    try:
        from lmcache_native.ops.kv_chunk_md5 import md5_isa

        info["md5_isa"] = md5_isa()
    except (ImportError, AttributeError):
        pass
    return info


def make_row(
    bench: str,
    case: str,
    *,
    ours: float | None,
    baseline: float | None,
    limit: float | None,
    names: tuple[str, str, str],
    tokens: int | None = None,
    block: int | None = None,
    payload_mb: float | None = None,
    ours_ms: float | None = None,
    goal: tuple[str, Callable[[dict[str, Any]], bool]] | None = None,
    in_scope: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Builds one combined-table row; ratios are bandwidth ratios (time ratios, same bytes).

    Args:
        bench: ``copy``, ``md5``, ``slot`` or ``engine``.
        case: what the row measures, e.g. ``"flash_attn gather"``.
        ours, baseline, limit: GB/s (``None``: not measured).
        names: what ours, the baseline and the limit are.
        tokens, block, payload_mb, ours_ms: the case's size and our time.
        goal: the issue's target as text and a test of the row, or ``None``.
        in_scope: whether the goal applies to this case (each goal is stated for given
            sizes, e.g. copies of ``llama3-8b`` at 1K-32K tokens); out of scope, ``met`` is
            ``"-"`` (a ``--quick`` run judges nothing).
        **extra: more JSON fields.
    """
    row: dict[str, Any] = {
        "bench": bench,
        "case": case,
        "tokens": tokens,
        "block": block,
        "MB": payload_mb,
        "ours": ours,
        "baseline": baseline,
        "limit": limit,
        "ours/base": ratio(ours, baseline),
        "ours/limit": ratio(ours, limit),
        "ours_ms": ours_ms,
        "ours_name": names[0],
        "baseline_name": names[1],
        "limit_name": names[2],
    }
    if goal is None:
        row["goal"], row["met"] = "-", "-"
    else:
        row["goal"] = goal[0]
        try:
            row["met"] = ("yes" if goal[1](row) else "no") if in_scope else "-"
        except TypeError:  # a ratio the goal needs is missing
            row["met"] = "-"
    row.update(extra)
    return row


def goal_scope(bench: str, preset: str | None, tokens: int | None) -> bool:
    """Whether the goal for ``bench`` covers a case of ``preset`` and ``tokens``.

    Copies: ``llama3-8b`` at 1K-32K tokens; MD5: any real model preset; slot strings: 1M slots
    or more; engine: ``llama3-8b`` at 8K tokens.
    """
    if bench == "copy":
        return preset == "llama3-8b" and tokens is not None and 1024 <= tokens <= 32768
    if bench == "md5":
        return preset not in (None, "tiny")
    if bench == "slot":
        return tokens is not None and tokens >= 1_000_000
    if bench == "engine":
        return preset == "llama3-8b" and tokens == 8192
    return True


def at_least(key: str, value: float) -> Callable[[dict[str, Any]], bool]:
    """A goal test: ``row[key] >= value``."""
    return lambda row: row[key] >= value


def all_of(*tests: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """A goal test that every test passes."""
    return lambda row: all(t(row) for t in tests)
