"""``lmcache-native bench`` / ``python benchmarks/run_all.py``: every benchmark, one table.

Runs, in this process and with a progress bar, the paged KV copy (gather/scatter over tokens
and block sizes), ``kv_chunk_md5``, slot-string parsing and the engine against the raw kernels
-- the same code as ``benchmarks/bench_*.py`` (``lmcache_native.bench.paged_kv_copy``,
``kv_chunk_md5``, ``slot_ranges``, ``engine``) -- then prints one table with our figure, the
same-run baseline and limit, their ratios and, on every row a goal covers, whether it is met;
writes ``--json`` and a PNG ``--plot`` (bandwidth against tokens and block size).

Sizes are those of a real model (``llama3-8b``, 1K and 8K tokens, 1M-slot strings), where
fixed costs do not decide the ratios; ``--quick`` keeps them and only samples less (3 rounds
instead of 7, no minimum sampling time). Every benchmark samples ours, the baseline and the
limit round-robin, so on a shared machine the ratios are the result; absolute GB/s drift with
the load.

Examples::

    lmcache-native bench                                  # llama3-8b, 1K/8K tokens, blocks 16/32
    lmcache-native bench --quick --json out.json --plot out.png
    lmcache-native bench --only copy,md5 --tokens 1k,8k,32k --block-sizes 16,32,64
    python benchmarks/run_all.py --json benchmarks/out/all.json --plot benchmarks/plot_cpu.png
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmcache_native.bench._util import (
    BENCHES,
    PRESETS,
    apply_threads,
    check_device,
    dump_json,
    load_average,
    machine_info,
    parse_int_list,
    parse_str_list,
)
from lmcache_native.bench.paged_kv_copy import add_layout_args

#: What is measured: the same with and without ``--quick``.
SIZES: dict[str, Any] = {
    "preset": "llama3-8b",
    "tokens": [1024, 8192],
    "block_sizes": [16, 32],
    "slots": 1_000_000,
}
#: How long each case is sampled: ``--quick`` only shortens this.
SAMPLING: dict[str, dict[str, Any]] = {
    "full": {"warmup": 2, "repeat": 7, "min_time": 0.3},
    "quick": {"warmup": 1, "repeat": 3, "min_time": 0.0},
}
NOTE = (
    "Ours, baseline and limit are sampled round-robin in the same run: on a shared machine the "
    "absolute GB/s are noise, the ratios are the result."
)

#: One unit of work: the benchmark, a progress label, a function returning combined rows.
Case = tuple[str, str, Callable[[], list[dict[str, Any]]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser`` (also used by ``lmcache-native bench``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="sample less (1 warm-up, 3 rounds, no minimum time); the sizes stay",
    )
    parser.add_argument(
        "--preset", default=SIZES["preset"], choices=sorted(PRESETS), help="model preset"
    )
    parser.add_argument(
        "--tokens", type=parse_int_list, default=SIZES["tokens"], help="e.g. 1k,8k (default)"
    )
    parser.add_argument(
        "--block-sizes",
        type=parse_int_list,
        default=SIZES["block_sizes"],
        help="copy sweep block sizes (default 16,32)",
    )
    add_layout_args(
        parser,
        ["flash_attn", "vllm_cpu"],
        "copy layouts (default flash_attn,vllm_cpu; mla for MLA presets)",
    )
    parser.add_argument(
        "--slots", type=int, default=SIZES["slots"], help="slots per slot string (1M)"
    )
    parser.add_argument(
        "--engine-tokens",
        type=int,
        default=None,
        help="tokens of the engine request (default: the largest --tokens, whole chunks)",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk")
    parser.add_argument(
        "--only",
        type=parse_str_list,
        default=list(BENCHES),
        help=f"benchmarks to run, of {','.join(BENCHES)} (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="more rounds, at most 200, until each variant has this many seconds of samples "
        "(default 0.3; a 1K-token copy then gets ~40 samples)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch and kernels (0: defaults)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write a plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fills the sampling options left at ``None`` and refuses bad values."""
    from lmcache_native.bench.paged_kv_copy import check_choices

    for key, value in SAMPLING["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.engine_tokens is None:
        args.engine_tokens = max(
            args.chunk_size, max(args.tokens) // args.chunk_size * args.chunk_size
        )
    for b in args.only:
        if b not in BENCHES:
            parser.error(f"--only: unknown benchmark {b!r}; known: {', '.join(BENCHES)}")
    check_choices(parser, args.layouts, args.directions)
    for name, values in (("tokens", args.tokens), ("block-sizes", args.block_sizes)):
        if any(v < 1 for v in values):
            parser.error(f"--{name}: values must be >= 1, got {values}")
    if args.slots < 1 or args.chunk_size < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--slots, --chunk-size, --repeat must be >= 1 and --warmup >= 0")
    if not args.min_time >= 0 or args.min_time > 60:
        parser.error(f"--min-time must be in [0, 60] seconds, got {args.min_time}")
    if args.engine_tokens % args.chunk_size:
        parser.error("--engine-tokens must be a multiple of --chunk-size (whole chunks)")


def _adapted(
    fn: Callable[[], list[dict[str, object]]],
    adapt: Callable[[dict[str, Any], str], dict[str, Any]],
    device: str,
) -> list[dict[str, Any]]:
    return [adapt(dict(r), device) for r in fn()]


def plan(args: argparse.Namespace) -> list[Case]:
    """The cases of ``args`` in table order (one per copy shape, so the progress bar moves)."""
    import torch

    from lmcache_native.bench import engine, kv_chunk_md5, paged_kv_copy, slot_ranges
    from lmcache_native.ops.kv_chunk_md5 import md5_isa

    preset = PRESETS[args.preset]
    dev = torch.device(args.device)
    sampling = {"warmup": args.warmup, "repeat": args.repeat, "min_time": args.min_time}
    out: list[Case] = []

    def add(bench: str, label: str, fn: Callable[[], list[dict[str, object]]], mod: Any) -> None:
        out.append((bench, label, functools.partial(_adapted, fn, mod.combined_row, dev.type)))

    if "copy" in args.only:
        copy_args = argparse.Namespace(
            directions=args.directions,
            chunk_on="host",
            pattern="blocks",
            compare_isa=False,
            **sampling,
        )
        for layout in ["mla"] if preset.mla else args.layouts:
            for bs in args.block_sizes:
                for n in args.tokens:
                    fn = functools.partial(
                        paged_kv_copy.run_case, copy_args, preset, layout, n, bs, dev
                    )
                    add("copy", f"copy {layout} b{bs} {n} tok", fn, paged_kv_copy)
    if "md5" in args.only:
        md5_args = argparse.Namespace(chunk_size=args.chunk_size, **sampling)
        isas = ["cuda"] if dev.type == "cuda" else [md5_isa()]
        layout = "mla" if preset.mla else "flash_attn"
        for n in args.tokens:
            fn = functools.partial(kv_chunk_md5.run_case, md5_args, preset, layout, n, dev, isas)
            add("md5", f"md5 {n} tok", fn, kv_chunk_md5)
    if "slot" in args.only:
        slot_args = argparse.Namespace(slots=args.slots, **sampling)
        for shape in slot_ranges.SHAPES:
            fn = functools.partial(slot_ranges.measure, slot_args, shape, dev)
            add("slot", f"slot {shape}", fn, slot_ranges)
    if "engine" in args.only:
        engine_args = argparse.Namespace(
            preset=preset.name,
            tokens=args.engine_tokens,
            chunk_size=args.chunk_size,
            tiers=["cpu"],
            disk_dir=None,
            redis_url=None,
            seed=0,
            **sampling,
        )
        fn = functools.partial(engine.run, engine_args, dev)
        add("engine", f"engine {args.engine_tokens} tok", fn, engine)
    return out


def run_cases(cases: Sequence[Case], *, progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs ``cases`` under a progress bar; returns the rows and the failures' messages."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    bar = tqdm(
        total=len(cases),
        unit="case",
        disable=None if progress else True,  # None: off when stderr is not a terminal
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for _bench, label, fn in cases:
            bar.set_description(label)
            load = load_average()
            try:
                got = fn()
            except Exception as exc:  # a failed case is reported; the others still count
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                bar.write(f"lmcache-native bench: {errors[-1]}", file=sys.stderr)
                got = []
            for r in got:
                r["load"] = load[0] if load else None
            if got:
                last = got[-1]
                bar.set_postfix_str(
                    ", ".join(
                        f"{key} {last[key]:.2f}"
                        for key in ("ours/base", "ours/limit")
                        if isinstance(last.get(key), float)
                    )
                )
            rows.extend(got)
            bar.update(1)
    finally:
        bar.close()
    return rows, errors


def main(argv: Sequence[str] | None = None, *, prog: str = "lmcache-native bench") -> int:
    """Parses ``argv`` and runs the benchmarks; returns the exit code (1 if any failed)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    return run(args, parser, command=" ".join([prog, *map(shlex.quote, argv)]))


def run(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    command: str = "lmcache-native bench",
) -> int:
    """Runs the parsed ``bench`` options (the body of ``main`` and of the CLI subcommand)."""
    from lmcache_native.bench import report

    resolve(args, parser)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                f"{parser.prog}: --plot needs matplotlib (pip install 'lmcache-native[bench]')",
                file=sys.stderr,
            )
            return 2
    dev = check_device(args.device)
    apply_threads(args.threads)
    machine = machine_info(dev)
    sampling = "quick" if args.quick else "full"
    print(
        f"{machine['cpu']}, {machine['cpu_count']} cores, load {machine['load_average']}; "
        f"torch {machine['torch']}, lmcache_native {machine['lmcache_native']} "
        f"({str(machine['commit'])[:12]}); copy ISA {machine['copy_isa']}, MD5 ISA "
        f"{machine['md5_isa']}; preset {args.preset}; {sampling} sampling (warm-up "
        f"{args.warmup}, {args.repeat} rounds, min {args.min_time:g} s per variant)",
        flush=True,
    )
    t0 = time.perf_counter()
    rows, errors = run_cases(plan(args), progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    machine["load_average_end"] = load_average()

    print(
        f"\nAll benchmarks on {args.device}; GB/s = (bytes read + written) / s, "
        "MD5: bytes hashed / s; ratios above 1: ours faster"
    )
    print(report.format_table(rows))
    print(report.legend(rows))
    print(f"{report.summary(rows)}; {seconds:.0f} s. {NOTE}", flush=True)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.pop("_bench_parser", None)
    payload = {
        "tool": "lmcache-native bench",
        "command": command,
        "seconds": round(seconds, 1),
        "machine": machine,
        "settings": settings,
        "note": NOTE,
        "rows": rows,
        "errors": errors,
    }
    if args.json is not None:
        dump_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot is not None and rows:
        title = (
            f"lmcache-native bench, {args.preset}, {args.device}: {machine['cpu']} "
            f"({machine['cpu_count']} cores, shared: ratios are the result)"
        )
        report.plot(rows, args.plot, title)
        print(f"wrote {args.plot}")
    if errors:
        print(f"{parser.prog}: {len(errors)} benchmark case(s) failed", file=sys.stderr)
        return 1
    return 0
