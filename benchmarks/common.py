"""Shared helpers for the ``bench_*.py`` scripts: model presets, timing, tables, JSON.

Every benchmark script imports this module as ``from common import ...`` (the scripts are run
as ``python benchmarks/bench_<name>.py``, which puts this folder on ``sys.path``).

Conventions (see STYLE.md, section 5):

* a figure is the **median** of ``repeat`` timed runs after ``warmup`` untimed runs;
* bandwidth counts bytes read **plus** bytes written (``gbps(2 * payload, seconds)`` for a copy);
* every row carries, from the same run, a baseline (what a user would write without us) and a
  limit (a plain contiguous copy of the same bytes), and the ratios against both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ModelPreset:
    """KV-cache geometry of one model (per worker, i.e. after tensor parallelism).

    Attributes:
        name: preset name used on the command line.
        num_layers: attention layers (one paged cache tensor each).
        num_kv_heads: KV heads (1 for MLA, whose single latent row has ``head_size`` elements).
        head_size: elements per head.
        dtype: KV-cache element dtype.
        block_size: tokens per paged block.
        mla: True for MLA caches ``[num_blocks, block_size, head_size]`` (no K/V axis).
    """

    name: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    dtype: torch.dtype
    block_size: int = 16
    mla: bool = False

    @property
    def num_kv(self) -> int:
        """2 (K and V) or 1 (MLA)."""
        return 1 if self.mla else 2

    @property
    def elem_size(self) -> int:
        """Bytes per element."""
        return torch.empty((), dtype=self.dtype).element_size()

    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers and both kv sides."""
        return self.num_kv * self.num_layers * self.num_kv_heads * self.head_size * self.elem_size

    def describe(self) -> str:
        """One-line description for table headers."""
        kind = "MLA" if self.mla else f"{self.num_kv_heads} KV heads"
        return (
            f"{self.name}: {self.num_layers} layers, {kind}, head {self.head_size}, "
            f"{str(self.dtype).removeprefix('torch.')}, block {self.block_size}"
        )


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        # Smoke-test size: runs in milliseconds anywhere.
        ModelPreset("tiny", num_layers=2, num_kv_heads=2, head_size=64, dtype=torch.float16),
        ModelPreset(
            "llama3-8b", num_layers=32, num_kv_heads=8, head_size=128, dtype=torch.bfloat16
        ),
        # Llama-3-70B at tensor parallelism 8 (1 KV head per worker).
        ModelPreset(
            "llama3-70b-tp8", num_layers=80, num_kv_heads=1, head_size=128, dtype=torch.bfloat16
        ),
        ModelPreset(
            "mistral-7b", num_layers=32, num_kv_heads=8, head_size=128, dtype=torch.float16
        ),
        ModelPreset(
            "qwen2.5-7b", num_layers=28, num_kv_heads=4, head_size=128, dtype=torch.bfloat16
        ),
        # DeepSeek-V3 MLA cache: 61 layers of [num_blocks, 64, 576] latent rows.
        ModelPreset(
            "deepseek-v3-mla",
            num_layers=61,
            num_kv_heads=1,
            head_size=576,
            dtype=torch.bfloat16,
            block_size=64,
            mla=True,
        ),
    )
}


def get_preset(name: str) -> ModelPreset:
    """Looks up a preset by name.

    Raises:
        ValueError: unknown preset (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


@dataclass
class Timing:
    """Timings of one measured function, in seconds."""

    median: float
    minimum: float
    samples: list[float] = field(default_factory=list)


def synchronize(device: torch.device | str) -> None:
    """Waits for queued work on ``device`` (no-op on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 10,
    min_time: float = 0.0,
) -> Timing:
    """Times ``fn`` with warm-up runs, then returns the median of ``repeat`` timed runs.

    CUDA work is bracketed by device synchronisation so each sample covers the whole call.

    Args:
        fn: the work to time (its result is ignored).
        device: the device ``fn`` runs on.
        warmup: untimed runs first (caches, allocators, clocks).
        repeat: timed runs (at least 1).
        min_time: keep sampling past ``repeat`` until this many seconds were measured in total.

    Returns:
        The median and minimum sample and all samples.
    """
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    samples: list[float] = []
    total = 0.0
    while len(samples) < max(1, repeat) or total < min_time:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        dt = time.perf_counter() - t0
        samples.append(dt)
        total += dt
    return Timing(median=statistics.median(samples), minimum=min(samples), samples=samples)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 10,
    min_time: float = 0.0,
    max_rounds: int = 200,
) -> dict[str, Timing]:
    """Times several functions round-robin (one sample of each per round), medians per name.

    At least ``repeat`` rounds; more (up to ``max_rounds``) until every function has
    ``min_time`` seconds of samples, so short cases get enough samples for a steady median.

    Interleaving spreads slow drifts of a shared machine (other processes, clocks, page cache)
    evenly over the functions being compared, so their ratio is steadier than that of
    back-to-back ``time_fn`` calls. On the CPU each sample starts after
    ``lmcache_native.bench._util.settle()``, so no function inherits the previous one's
    spinning OpenMP workers.
    """
    from lmcache_native.bench._util import settle

    on_cpu = torch.device(device).type == "cpu"
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 0
    while rounds < max(1, repeat) or (
        rounds < max_rounds and min(sum(v) for v in samples.values()) < min_time
    ):
        rounds += 1
        for name, fn in fns.items():
            if on_cpu:
                settle()
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - t0)
    return {
        name: Timing(median=statistics.median(v), minimum=min(v), samples=v)
        for name, v in samples.items()
    }


def gbps(num_bytes: int | float, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second); ``num_bytes`` counts read + written bytes."""
    return float(num_bytes) / seconds / 1e9 if seconds > 0 else float("inf")


def ratio(a: float, b: float) -> float:
    """``a / b`` (``nan`` when ``b`` is zero)."""
    return a / b if b else float("nan")


def parse_int_list(text: str) -> list[int]:
    """Parses ``"1024,8192,32k"`` into ints (a trailing ``k`` multiplies by 1024)."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        mult = 1024 if item.endswith("k") else 1
        out.append(int(item.removesuffix("k")) * mult)
    if not out:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers, got {text!r}"
        )
    return out


def parse_str_list(text: str) -> list[str]:
    """Parses ``"a,b"`` into ``["a", "b"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def add_common_args(parser: argparse.ArgumentParser, *, default_preset: str = "llama3-8b") -> None:
    """Adds ``--preset --device --warmup --repeat --threads --json`` to a benchmark's parser."""
    parser.add_argument(
        "--preset", default=default_preset, choices=sorted(PRESETS), help="model preset"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs (median reported)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.0,
        help="keep sampling (round-robin, at most 200 rounds) until each variant has this many "
        "seconds of samples",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch and the CPU kernels (0: leave the defaults)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")


def apply_threads(threads: int) -> None:
    """Sets the thread count of torch and of the native CPU kernels (``threads <= 0``: no-op)."""
    if threads <= 0:
        return
    torch.set_num_threads(threads)
    from lmcache_native import _native

    _native.set_num_threads(threads)


def check_device(device: str) -> torch.device:
    """Returns ``torch.device(device)``; exits with a clear message when CUDA is unusable."""
    dev = torch.device(device)
    if dev.type == "cuda":
        import lmcache_native

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device on this machine")
        if not lmcache_native.HAS_CUDA:
            sys.exit(
                "--device cuda: lmcache_native was built without CUDA (rebuild with LMC_CUDA=ON)"
            )
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Describes the machine for the JSON output and the README (CPU, cores, GPU, versions)."""
    import lmcache_native
    from lmcache_native import _native
    from lmcache_native.bench._util import cpu_model

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "native_threads": _native.num_threads(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmcache_native": lmcache_native.__version__,
        "commit": lmcache_native.COMMIT_ID,
        "has_cuda_build": bool(lmcache_native.HAS_CUDA),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_runtime_torch"] = torch.version.cuda
    return info


def format_value(v: object) -> str:
    """Formats a table cell: floats with 2-3 significant decimals, others with ``str``."""
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """Renders rows as a Markdown table (also readable in a terminal)."""
    cells = [[format_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(list(columns)), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def print_table(
    rows: Sequence[dict[str, object]], columns: Sequence[str], title: str | None = None
) -> None:
    """Prints ``format_table`` with an optional title line."""
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns), flush=True)


def write_json(
    path: Path | str | None,
    *,
    benchmark: str,
    args: argparse.Namespace,
    rows: Sequence[dict[str, object]],
    device: torch.device | str = "cpu",
) -> None:
    """Writes ``{"benchmark", "machine", "args", "rows"}`` to ``path`` (no-op for ``None``)."""
    if path is None:
        return
    payload = {
        "benchmark": benchmark,
        "machine": machine_info(device),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": list(rows),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {p}")


def preset_dict(preset: ModelPreset) -> dict[str, object]:
    """A preset as JSON-friendly values."""
    d = asdict(preset)
    d["dtype"] = str(preset.dtype).removeprefix("torch.")
    return d
