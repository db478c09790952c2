"""``lmcache-native bench`` / ``python benchmarks/run_all.py``: every benchmark, one table.

Runs the paged KV copy (gather/scatter sweep over tokens and block sizes), ``kv_chunk_md5``,
slot-string parsing and the engine benchmarks with a progress bar, then prints one table with
our figure, the same-run baseline and limit, their ratios and the issue's goal per row, writes
``--json`` and a PNG ``--plot`` (bandwidth against tokens and block size).

Where the figures come from (``--mode``):

* ``scripts`` (default in a source checkout): each ``benchmarks/bench_*.py`` runs as a
  subprocess with ``--json``; its rows are read back. Nothing is re-timed here.
* ``builtin`` (default for an installed wheel, where ``benchmarks/`` is absent): a minimal
  in-process set (copy, MD5, slot strings) with the same kind of baseline and limit.

Every benchmark samples ours, the baseline and the limit round-robin, so on a shared machine
the ratios are the result; absolute GB/s drift with the load.

Examples::

    lmcache-native bench                                  # llama3-8b, 1K/8K tokens, blocks 16/32
    lmcache-native bench --quick --json out.json --plot out.png
    lmcache-native bench --only copy,md5 --tokens 1k,8k,32k --block-sizes 16,32,64
    python benchmarks/run_all.py --json benchmarks/out/all.json --plot benchmarks/plot_cpu.png
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmcache_native.bench._util import (
    BENCHES,
    PRESETS,
    load_average,
    machine_info,
    parse_int_list,
    parse_str_list,
)

FULL: dict[str, Any] = {
    "preset": "llama3-8b",
    "tokens": [1024, 8192],
    "block_sizes": [16, 32],
    "slots": 1_000_000,
    "warmup": 2,
    "repeat": 7,
    "min_time": 0.3,
}
QUICK: dict[str, Any] = {
    "preset": "tiny",
    "tokens": [256],
    "block_sizes": [16],
    "slots": 20_000,
    "warmup": 1,
    "repeat": 3,
    "min_time": 0.0,
}
NOTE = (
    "Ours, baseline and limit are sampled round-robin in the same run: on a shared machine the "
    "absolute GB/s are noise, the ratios are the result."
)


def _list_arg(parse: Any) -> Any:
    def conv(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return conv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser`` (also used by ``lmcache-native bench``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke run (preset tiny, 256 tokens, block 16, 3 repeats)",
    )
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="model preset")
    parser.add_argument(
        "--tokens", type=_list_arg(parse_int_list), default=None, help="e.g. 1k,8k (default)"
    )
    parser.add_argument(
        "--block-sizes",
        type=_list_arg(parse_int_list),
        default=None,
        help="copy sweep block sizes (default 16,32)",
    )
    parser.add_argument(
        "--layouts",
        type=_list_arg(parse_str_list),
        default=["flash_attn", "vllm_cpu"],
        help="copy layouts (default flash_attn,vllm_cpu; mla for MLA presets)",
    )
    parser.add_argument(
        "--directions",
        type=_list_arg(parse_str_list),
        default=["gather", "scatter"],
        help="copy directions: gather,scatter (scripts mode also: both)",
    )
    parser.add_argument("--slots", type=int, default=None, help="slots per slot string (1M)")
    parser.add_argument(
        "--engine-tokens",
        type=int,
        default=None,
        help="tokens of the engine request (default: the largest --tokens, whole chunks)",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk")
    parser.add_argument(
        "--only",
        type=_list_arg(parse_str_list),
        default=list(BENCHES),
        help=f"benchmarks to run, of {','.join(BENCHES)} (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="copy sweep (scripts mode): more rounds, at most 200, until each variant has this "
        "many seconds of samples (default 0.3; short 1K-token copies then get ~40 samples)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch and kernels (0: defaults)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "scripts", "builtin"],
        help="scripts: run a checkout's benchmarks/bench_*.py; builtin: the in-process set; "
        "auto: scripts when a checkout is found",
    )
    parser.add_argument(
        "--bench-dir",
        type=Path,
        default=None,
        help="the checkout's benchmarks/ folder (default: $LMC_BENCH_DIR or next to the package)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per benchmark script (scripts mode)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write a plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _resolve(args: argparse.Namespace) -> None:
    """Fills the options left at ``None`` from the quick or the full defaults."""
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.engine_tokens is None:
        args.engine_tokens = max(
            args.chunk_size, max(args.tokens) // args.chunk_size * args.chunk_size
        )


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for b in args.only:
        if b not in BENCHES:
            parser.error(f"--only: unknown benchmark {b!r}; known: {', '.join(BENCHES)}")
    for d in args.directions:
        if d not in ("gather", "scatter", "both"):
            parser.error(f"--directions: unknown direction {d!r}; known: gather, scatter, both")
    for name, values in (("tokens", args.tokens), ("block-sizes", args.block_sizes)):
        if any(v < 1 for v in values):
            parser.error(f"--{name}: values must be >= 1, got {values}")
    if args.slots < 1 or args.chunk_size < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--slots, --chunk-size, --repeat must be >= 1 and --warmup >= 0")
    if not args.min_time >= 0 or args.min_time > 60:
        parser.error(f"--min-time must be in [0, 60] seconds, got {args.min_time}")
    if args.engine_tokens % args.chunk_size:
        parser.error("--engine-tokens must be a multiple of --chunk-size (whole chunks)")


def _common_args(args: argparse.Namespace) -> list[str]:
    out = ["--warmup", str(args.warmup), "--repeat", str(args.repeat), "--device", args.device]
    if args.threads > 0:
        out += ["--threads", str(args.threads)]
    return out


def _csv(values: Sequence[object]) -> str:
    return ",".join(str(v) for v in values)


def plan_jobs(args: argparse.Namespace) -> list[Any]:
    """The subprocess jobs of scripts mode, in table order (one copy job per layout and block
    size, so the progress bar moves during the long sweep)."""
    from lmcache_native.bench.scripts import Job

    p = PRESETS[args.preset]
    common = _common_args(args)
    jobs: list[Job] = []
    if "copy" in args.only:
        layouts = ["mla"] if p.mla else args.layouts
        for layout in layouts:
            for bs in args.block_sizes:
                jobs.append(
                    Job(
                        "copy",
                        f"copy {layout} b{bs}",
                        ["--preset", p.name, "--tokens", _csv(args.tokens), "--layouts", layout]
                        + ["--block-sizes", str(bs), "--directions", _csv(args.directions)]
                        + ["--min-time", str(args.min_time)]
                        + common,
                    )
                )
    if "md5" in args.only:
        jobs.append(
            Job(
                "md5",
                "md5",
                ["--preset", p.name, "--tokens", _csv(args.tokens)]
                + ["--chunk-size", str(args.chunk_size)]
                + common,
            )
        )
    if "slot" in args.only:
        jobs.append(Job("slot", "slot", ["--slots", str(args.slots)] + common))
    if "engine" in args.only:
        jobs.append(
            Job(
                "engine",
                "engine",
                ["--preset", p.name, "--tokens", str(args.engine_tokens)]
                + ["--chunk-size", str(args.chunk_size)]
                + common,
            )
        )
    return jobs


def _bar(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="bench",
        disable=True if disable else None,  # None: off when stderr is not a terminal
        file=sys.stderr,
        dynamic_ncols=True,
    )


def run_scripts(
    args: argparse.Namespace, bench_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Runs the scripts; returns combined rows, per-job records and error messages."""
    from lmcache_native.bench.scripts import rows_of, run_job

    jobs = plan_jobs(args)
    rows: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    errors: list[str] = []
    bar = _bar(len(jobs), args.no_progress)
    try:
        for job in jobs:
            bar.set_description(job.label)
            load = load_average()
            run_job(
                job, bench_dir, on_line=lambda s: bar.set_postfix_str(s[:70]), timeout=args.timeout
            )
            got = rows_of(job, args.device)
            for r in got:
                r["load"] = load[0] if load else None
            rows.extend(got)
            sources.append(
                {
                    "bench": job.bench,
                    "command": job.command,
                    "returncode": job.returncode,
                    "seconds": round(job.seconds, 2),
                    "result": job.result,
                }
            )
            if job.returncode != 0 or job.result is None or not got:
                tail = "\n    ".join(job.stderr_tail[-12:])
                errors.append(f"{job.command} failed (exit {job.returncode}):\n    {tail}")
                bar.write(f"lmcache-native bench: {errors[-1]}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
    return rows, sources, errors


def run_builtin(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs the in-process set; returns combined rows and error messages."""
    import torch

    from lmcache_native.bench import builtin

    if args.threads > 0:
        from lmcache_native import _native

        torch.set_num_threads(args.threads)
        _native.set_num_threads(args.threads)
    settings = builtin.Settings(
        preset=PRESETS[args.preset],
        tokens=list(args.tokens),
        block_sizes=list(args.block_sizes),
        layouts=[x for x in args.layouts],
        directions=[d for d in args.directions if d != "both"],
        slots=args.slots,
        chunk_size=args.chunk_size,
        warmup=args.warmup,
        repeat=args.repeat,
        benches=[b for b in args.only if b != "engine"],
    )
    for layout in settings.layouts:
        if layout not in builtin.COPY_LAYOUTS:
            raise SystemExit(
                f"--layouts: the built-in set times {', '.join(builtin.COPY_LAYOUTS)}; "
                f"{layout!r} needs the checkout's benchmarks (--mode scripts)"
            )
    units = list(builtin.cases(settings))
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    bar = _bar(len(units), args.no_progress)
    try:
        for label, fn in units:
            bar.set_description(label)
            load = load_average()
            try:
                got = fn()
                for r in got:
                    r["load"] = load[0] if load else None
                rows.extend(got)
            except (AssertionError, RuntimeError, ValueError, MemoryError) as exc:
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                bar.write(f"lmcache-native bench: {errors[-1]}", file=sys.stderr)
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
    from lmcache_native.bench.scripts import find_bench_dir

    _resolve(args)
    _check(args, parser)
    bench_dir = find_bench_dir(args.bench_dir)
    mode = args.mode
    if mode == "auto":
        # An explicit --bench-dir that does not hold the scripts is an error, not a fallback.
        mode = "scripts" if bench_dir is not None or args.bench_dir is not None else "builtin"
    if mode == "scripts" and bench_dir is None:
        where = args.bench_dir or "$LMC_BENCH_DIR or the source checkout next to the package"
        print(
            f"{parser.prog}: no benchmarks/ folder with the bench_*.py scripts "
            f"found at {where}; pass --bench-dir, or use --mode builtin (the in-process set)",
            file=sys.stderr,
        )
        return 2
    if mode == "builtin" and args.device != "cpu":
        print(f"{parser.prog}: the built-in set runs on the CPU only", file=sys.stderr)
        return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                f"{parser.prog}: --plot needs matplotlib (pip install 'lmcache-native[bench]')",
                file=sys.stderr,
            )
            return 2

    machine = machine_info()
    print(
        f"{machine['cpu']}, {machine['cpu_count']} cores, load {machine['load_average']}; "
        f"torch {machine['torch']}, lmcache_native {machine['lmcache_native']} "
        f"({str(machine['commit'])[:12]}); mode {mode}; preset {args.preset}",
        flush=True,
    )
    t0 = time.perf_counter()
    sources: list[dict[str, Any]] = []
    if mode == "scripts":
        assert bench_dir is not None
        rows, sources, errors = run_scripts(args, bench_dir)
    else:
        if "engine" in args.only:
            print(
                "  (engine rows need the checkout's benchmarks/bench_engine.py; skipped)",
                file=sys.stderr,
            )
        rows, errors = run_builtin(args)
    seconds = time.perf_counter() - t0
    machine["load_average_end"] = load_average()

    print(
        f"\nAll benchmarks on {args.device} ({mode}); GB/s = (bytes read + written) / s, "
        "MD5: bytes hashed / s; ratios above 1: ours faster"
    )
    print(report.format_table(rows))
    print(report.legend(rows))
    print(f"{report.summary(rows)}; {seconds:.0f} s. {NOTE}", flush=True)

    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if not k.startswith("_")
    }
    payload = {
        "tool": "lmcache-native bench",
        "command": command,
        "mode": mode,
        "bench_dir": str(bench_dir) if bench_dir else None,
        "seconds": round(seconds, 1),
        "machine": machine,
        "settings": settings,
        "note": NOTE,
        "rows": rows,
        "errors": errors,
        "sources": sources,
    }
    if args.json is not None:
        report.write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot is not None and rows:
        title = (
            f"lmcache-native bench, {args.preset}, {args.device}: {machine['cpu']} "
            f"({machine['cpu_count']} cores, shared: ratios are the result)"
        )
        report.plot(rows, args.plot, title)
        print(f"wrote {args.plot}")
    if errors:
        print(f"{parser.prog}: {len(errors)} benchmark(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
