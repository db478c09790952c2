"""Benchmark of slot_ranges: parse + compress of a slot string against the pure-Python parser.

For each string shape it times, in the same run:

* ``ours``: ``parse_slot_mapping(text, max_slots)`` (C++ validation + fill into an int64
  tensor) then the compressed form, in two rows per shape (``form``):

  - ``list``: ``compress_slot_mapping`` (C++ run detection + the Python list of ints and
    ``[start, end]`` lists, the admin API's JSON form);
  - ``table``: ``compress_slot_ranges`` (the same items as an int64 ``[num_items, 2]`` tensor,
    no Python object per item);
* ``baseline``: ``testing/reference.py``'s pure-Python ``parse_slot_mapping`` and
  ``compress_slot_mapping`` on the same text;

* ``limit``: a plain contiguous copy of as many bytes as the parse moves (the text read plus
  the int64 slots written);

and reports both phases separately as well, all sampled round-robin after the warm-up.
Shapes (``--slots`` slots each):

* ``blocks``: whole blocks of 16 slots in a random block order, one ``[a,b]`` per block (what
  vLLM's slot mappings look like);
* ``mixed``: runs of 1-8 consecutive slots at random places, runs of >= 3 written as ranges;
* ``singles``: every slot written out as a number, in a random order (the worst case).

With ``--device cuda`` a row also times ``parse_slot_ranges`` + ``expand_slot_ranges`` on the
GPU against parsing on the CPU and copying the slots to the GPU.

Examples::

    python benchmarks/bench_slot_ranges.py --slots 1000000
    python benchmarks/bench_slot_ranges.py --shapes singles --json out.json

:func:`combined_row` turns a row into a row of ``lmcache-native bench``'s table.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import torch

from lmcache_native.bench._util import (
    add_common_args,
    apply_threads,
    check_device,
    parse_str_list,
    ratio,
    time_interleaved,
    write_json,
)
from lmcache_native.bench.report import print_table
from lmcache_native.bench.rows import at_least, goal_scope, make_row, number
from lmcache_native.ops import (
    compress_slot_mapping,
    compress_slot_ranges,
    expand_slot_ranges,
    parse_slot_mapping,
)
from lmcache_native.ops.slot_ranges import parse_slot_ranges
from lmcache_native.testing import reference as ref

SHAPES = ("blocks", "mixed", "singles")


def make_text(shape: str, num_slots: int, seed: int = 0) -> str:
    """A slot string of ``num_slots`` slots in the given shape."""
    rng = random.Random(seed)
    items: list[str] = []
    if shape == "blocks":
        num_blocks = num_slots // 16
        order = list(range(num_blocks))
        rng.shuffle(order)
        items = [f"[{b * 16},{b * 16 + 15}]" for b in order]
    elif shape == "mixed":
        left = num_slots
        while left > 0:
            n = min(left, rng.randint(1, 8))
            start = rng.randrange(0, 1 << 24)
            items.append(
                f"[{start},{start + n - 1}]"
                if n >= 3
                else ",".join(str(start + i) for i in range(n))
            )
            left -= n
    elif shape == "singles":
        slots = list(range(num_slots))
        rng.shuffle(slots)
        items = [str(s) for s in slots]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return ",".join(items)


def measure(args: argparse.Namespace, shape: str, dev: torch.device) -> list[dict[str, object]]:
    """Times ours (both forms) and the reference on one shape; checks they agree first."""
    text = make_text(shape, args.slots)
    max_slots = args.slots
    ours_slots = parse_slot_mapping(text, max_slots)
    ref_slots = ref.parse_slot_mapping(text, max_slots)
    assert ours_slots.tolist() == ref_slots, "parse disagrees with the reference"
    ref_items = ref.compress_slot_mapping(ref_slots)
    assert compress_slot_mapping(ours_slots) == ref_items
    assert compress_slot_ranges(ours_slots).tolist() == ref.compress_slot_ranges(ref_slots)
    moved = len(text) + 8 * len(ref_slots)  # text read + int64 slots written
    src = torch.empty((moved + 1) // 2, dtype=torch.uint8).fill_(7)
    dst = torch.empty_like(src)

    # Round-robin samples: a drift of the shared machine slows ours and the baseline alike.
    t = {
        name: timing.median
        for name, timing in time_interleaved(
            {
                "list": lambda: compress_slot_mapping(parse_slot_mapping(text, max_slots)),
                "table": lambda: compress_slot_ranges(parse_slot_mapping(text, max_slots)),
                "parse": lambda: parse_slot_mapping(text, max_slots),
                "compress_list": lambda: compress_slot_mapping(ours_slots),
                "compress_table": lambda: compress_slot_ranges(ours_slots),
                "ref_parse": lambda: ref.parse_slot_mapping(text, max_slots),
                "ref_compress": lambda: ref.compress_slot_mapping(ref_slots),
                "limit": lambda: dst.copy_(src),
            },
            warmup=args.warmup,
            repeat=args.repeat,
            min_time=args.min_time,
        ).items()
    }
    t_ref_parse, t_ref_compress = t["ref_parse"], t["ref_compress"]
    rows: list[dict[str, object]] = []
    for form in ("list", "table"):
        row: dict[str, object] = {
            "shape": shape,
            "form": form,
            "slots": len(ref_slots),
            "text_MB": len(text) / 1e6,
            "items_out": len(ref_items),
            "ours_ms": t[form] * 1e3,
            "baseline_ms": (t_ref_parse + t_ref_compress) * 1e3,
            "parse_ms": t["parse"] * 1e3,
            "compress_ms": t[f"compress_{form}"] * 1e3,
            "ref_parse_ms": t_ref_parse * 1e3,
            "ref_compress_ms": t_ref_compress * 1e3,
            "moved_MB": moved / 1e6,
            "limit_ms": t["limit"] * 1e3,
        }
        row["ours/base"] = ratio(t_ref_parse + t_ref_compress, t[form])
        row["ours/limit"] = ratio(t["limit"], t[form])
        row["parse_x"] = ratio(t_ref_parse, t["parse"])
        row["compress_x"] = ratio(t_ref_compress, t[f"compress_{form}"])
        rows.append(row)
    if dev.type == "cuda":
        ranges = parse_slot_ranges(text, max_slots)
        gpu = expand_slot_ranges(ranges, device=dev)
        assert torch.equal(gpu.cpu(), ours_slots)
        gpu_t = time_interleaved(
            {
                "expand": lambda: expand_slot_ranges(
                    parse_slot_ranges(text, max_slots), device=dev
                ),
                "h2d": lambda: parse_slot_mapping(text, max_slots).to(dev),
            },
            device=dev,
            warmup=2,
            repeat=args.repeat,
        )
        t_gpu, t_copy = gpu_t["expand"].median, gpu_t["h2d"].median
        for row in rows:
            row["gpu_expand_ms"] = t_gpu * 1e3
            row["cpu_parse+h2d_ms"] = t_copy * 1e3
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its table; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--slots", type=int, default=1_000_000, help="slots per string")
    parser.add_argument(
        "--shapes", type=parse_str_list, default=list(SHAPES), help="blocks,mixed,singles"
    )
    parser.set_defaults(repeat=5, warmup=1)
    args = parser.parse_args(argv)
    dev = check_device(args.device)
    apply_threads(args.threads)
    for s in args.shapes:
        if s not in SHAPES:
            parser.error(f"--shapes: unknown shape {s!r}; known: {', '.join(SHAPES)}")

    rows = []
    for shape in args.shapes:
        for r in measure(args, shape, dev):
            rows.append(r)
            print(
                f"  {shape:>8} ({r['form']}): ours/base {r['ours/base']:.0f}, "
                f"ours/limit {r['ours/limit']:.2f}",
                file=sys.stderr,
                flush=True,
            )
    cols = ["shape", "form", "slots", "text_MB", "items_out", "ours_ms", "baseline_ms"]
    cols += ["limit_ms", "ours/base", "ours/limit"]
    cols += ["parse_ms", "ref_parse_ms", "parse_x", "compress_ms", "ref_compress_ms", "compress_x"]
    if dev.type == "cuda":
        cols += ["gpu_expand_ms", "cpu_parse+h2d_ms"]
    print_table(
        rows,
        cols,
        f"slot_ranges parse + compress on the CPU ({args.slots} slots; baseline: pure Python, "
        "testing/reference.py; limit: a contiguous copy of the text + int64 slot bytes)",
    )
    write_json(args.json, benchmark="slot_ranges", args=args, rows=rows, device=dev)
    return 0


def combined_row(row: dict[str, Any], device: str) -> dict[str, Any]:
    """A row of this benchmark -> a row of the combined table.

    Bandwidth here is (text bytes read + int64 slots written) / s, so that every row of the
    combined table has one unit.
    """
    del device  # parsing runs on the CPU
    slots = int(row.get("slots") or 0)
    moved = (number(row.get("moved_MB")) or 0.0) * 1e6
    table = row.get("form") == "table"

    def bw(key: str) -> float | None:
        ms = number(row.get(key))
        return moved / ms / 1e6 if ms else None

    return make_row(
        "slot",
        f"parse+compress{'->table' if table else ''} {row.get('shape')}",
        ours=bw("ours_ms"),
        baseline=bw("baseline_ms"),
        limit=bw("limit_ms"),
        names=(
            f"parse_slot_mapping + compress_slot_{'ranges' if table else 'mapping'}",
            "pure Python (reference.py)",
            "contiguous copy",
        ),
        tokens=slots,
        payload_mb=moved / 1e6,
        ours_ms=number(row.get("ours_ms")),
        goal=("base>=30", at_least("ours/base", 30)),
        in_scope=goal_scope("slot", None, slots),
        shape=row.get("shape"),
        form="table" if table else "list",
    )
