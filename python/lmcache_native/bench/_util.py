"""What every benchmark shares: model presets, the one timer, units, options, machine, JSON.

Conventions:

* a figure is the **median** of the timed samples after ``warmup`` untimed rounds;
* every function compared in a case is sampled round-robin (one sample of each per round, see
  :func:`time_interleaved`), so a drift of a shared machine slows them alike;
* bandwidth counts bytes read **plus** bytes written (``gbps(2 * payload, seconds)`` for a copy;
  bytes hashed for a hash);
* every row carries, from the same run, a baseline (what one writes without us) and a limit (a
  plain contiguous copy of the same bytes), and the ratios against both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

#: Benchmarks of the combined run, in table order.
BENCHES: tuple[str, ...] = ("copy", "md5", "slot", "engine")


@dataclass(frozen=True)
class ModelPreset:
    """KV-cache geometry of one model per worker (after tensor parallelism).

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

    def as_dict(self) -> dict[str, object]:
        """The preset as JSON-friendly values."""
        d = asdict(self)
        d["dtype"] = str(self.dtype).removeprefix("torch.")
        return d


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        # Smoke-test size: runs in milliseconds anywhere (too small for trustworthy ratios).
        ModelPreset("tiny", 2, 2, 64, torch.float16),
        ModelPreset("llama3-8b", 32, 8, 128, torch.bfloat16),
        # Llama-3-70B at tensor parallelism 8 (1 KV head per worker).
        ModelPreset("llama3-70b-tp8", 80, 1, 128, torch.bfloat16),
        ModelPreset("mistral-7b", 32, 8, 128, torch.float16),
        ModelPreset("qwen2.5-7b", 28, 4, 128, torch.bfloat16),
        # DeepSeek-V3 MLA cache: 61 layers of [num_blocks, 64, 576] latent rows.
        ModelPreset("deepseek-v3-mla", 61, 1, 576, torch.bfloat16, block_size=64, mla=True),
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


# --- the timer ------------------------------------------------------------------------------------

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


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeat: int = 10,
    min_time: float = 0.0,
    max_rounds: int = 200,
    before: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, Timing]:
    """Times several functions round-robin (one sample of each per round), medians per name.

    At least ``repeat`` rounds; more (up to ``max_rounds``) until every function has
    ``min_time`` seconds of samples, so short cases get enough samples for a steady median.
    Interleaving spreads slow drifts of a shared machine (other processes, clocks, page cache)
    evenly over the functions being compared, so their ratio is steadier than that of
    back-to-back timings. On the CPU each sample starts after :func:`settle`, so no function
    inherits the previous one's spinning OpenMP workers; CUDA work is bracketed by device
    synchronisation so each sample covers the whole call.

    Args:
        fns: name -> the work to time (its result is ignored).
        device: the device the functions run on.
        warmup: untimed rounds first (caches, allocators, clocks).
        repeat: timed rounds (at least 1).
        min_time: keep sampling until each function has this many seconds of samples.
        max_rounds: at most this many rounds when ``min_time`` asks for more than ``repeat``.
        before: name -> untimed set-up run before each call of that function (warm-up too).
    """
    pre = dict(before or {})
    on_cpu = torch.device(device).type == "cpu"
    for _ in range(max(0, warmup)):
        for name, fn in fns.items():
            if name in pre:
                pre[name]()
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 0
    while rounds < max(1, repeat) or (
        rounds < max_rounds and min(sum(v) for v in samples.values()) < min_time
    ):
        rounds += 1
        for name, fn in fns.items():
            if name in pre:
                pre[name]()
                synchronize(device)
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


def gbps(num_bytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second); ``num_bytes`` counts read + written bytes."""
    return float(num_bytes) / seconds / 1e9 if seconds > 0 else float("inf")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or ``None`` when either is missing or NaN, or ``b`` is not positive."""
    if a is None or b is None or not b > 0 or a != a:
        return None
    return a / b


# --- options --------------------------------------------------------------------------------------


def parse_int_list(text: str) -> list[int]:
    """``"1024,8k"`` -> ``[1024, 8192]`` (a ``k`` suffix multiplies by 1024).

    Raises:
        argparse.ArgumentTypeError: an item is not an integer, or the list is empty.
    """
    out: list[int] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item:
            mult = 1024 if item.endswith("k") else 1
            try:
                out.append(int(item.removesuffix("k")) * mult)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not an integer: {item!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers, got {text!r}"
        )
    return out


def parse_str_list(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def add_common_args(parser: argparse.ArgumentParser, *, default_preset: str = "llama3-8b") -> None:
    """Adds ``--preset --device --warmup --repeat --min-time --threads --json`` to a parser."""
    parser.add_argument(
        "--preset", default=default_preset, choices=sorted(PRESETS), help="model preset"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds (median reported)")
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


# --- machine and JSON -----------------------------------------------------------------------------


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


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU, cores, load, versions, the native build and the GPU, for the JSON and the README."""
    import lmcache_native
    from lmcache_native import _native
    from lmcache_native.ops import copy_isa
    from lmcache_native.ops.kv_chunk_md5 import md5_isa

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
        "copy_isa": copy_isa(),
        "md5_isa": md5_isa(),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_runtime_torch"] = torch.version.cuda
    return info


def write_json(
    path: Path | str | None,
    *,
    benchmark: str,
    args: argparse.Namespace,
    rows: list[dict[str, object]],
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
    dump_json(Path(path), payload)
    print(f"wrote {path}")


def dump_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def busy_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """Seconds covered by at least one ``(start, end)`` interval (overlaps counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total
