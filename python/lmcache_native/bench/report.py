"""The combined table, the JSON file and the PNG plot of ``lmcache-native bench``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmcache_native.bench._util import BENCHES

COLUMNS: tuple[str, ...] = (
    "bench",
    "case",
    "tokens",
    "block",
    "MB",
    "ours",
    "baseline",
    "limit",
    "ours/base",
    "ours/limit",
    "ours_ms",
    "goal",
    "met",
)


def format_value(v: object) -> str:
    """A table cell: ``-`` for missing, floats with 2-3 significant figures."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        a = abs(v)
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.1 or a == 0:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """Rows as a Markdown table (also readable in a terminal); text columns left-aligned."""
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    left = {"bench", "case", "goal"}

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if c in left else v.rjust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            (":" + "-" * (w + 1)) if c in left else ("-" * (w + 1) + ":")
            for w, c in zip(widths, columns, strict=True)
        )
        + "|"
    )
    return "\n".join([line(list(columns)), rule, *(line(r) for r in cells)])


def legend(rows: Sequence[dict[str, Any]]) -> str:
    """One line per benchmark: what ours, the baseline and the limit are."""
    seen: dict[str, tuple[set[str], set[str], set[str]]] = {}
    for r in rows:
        names = seen.setdefault(r["bench"], (set(), set(), set()))
        for i, key in enumerate(("ours_name", "baseline_name", "limit_name")):
            if r.get(key) not in (None, "-"):
                names[i].add(str(r[key]))
    lines = []
    for bench in [b for b in BENCHES if b in seen] + [b for b in seen if b not in BENCHES]:
        ours, base, limit = (", ".join(sorted(n)) or "-" for n in seen[bench])
        lines.append(f"- {bench}: ours = {ours}; baseline = {base}; limit = {limit}")
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """``"N rows, goals met in A of B"``."""
    judged = [r for r in rows if r.get("met") in ("yes", "no")]
    met = sum(r["met"] == "yes" for r in judged)
    return f"{len(rows)} rows; goal met in {met} of {len(judged)} rows with a goal"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """A PNG of bandwidth: ours vs baseline vs limit.

    One panel per (copy layout, direction) and per MD5 layout, GB/s against tokens (log scale),
    one line style per block size; slot-string and engine rows as grouped bars. Uses the Agg
    backend (no display needed).

    Raises:
        ImportError: matplotlib is not installed (``pip install 'lmcache-native[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "tab:blue", "baseline": "tab:orange", "limit": "tab:green"}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]

    line_panels: dict[str, list[dict[str, Any]]] = {}
    bar_panels: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["bench"] in ("copy", "md5"):
            key = f"{r['bench']}: {r['case']}"
            line_panels.setdefault(key, []).append(r)
        else:
            bar_panels.setdefault(r["bench"], []).append(r)
    panels = len(line_panels) + len(bar_panels)
    if panels == 0:
        raise ValueError("nothing to plot: no rows")
    ncols = min(3, panels)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    flat = [ax for row_axes in axes for ax in row_axes]

    for ax, (name, prow) in zip(flat, line_panels.items(), strict=False):
        blocks = sorted({r.get("block") or 0 for r in prow})
        names = {k: prow[0].get(f"{k}_name") for k in ("ours", "baseline", "limit")}
        for bi, block in enumerate(blocks):
            sel = sorted(
                (r for r in prow if (r.get("block") or 0) == block), key=lambda r: r["tokens"]
            )
            xs = [r["tokens"] for r in sel]
            for series in ("ours", "baseline", "limit"):
                ys = [r.get(series) for r in sel]
                if all(y is None for y in ys):
                    continue
                ax.plot(
                    xs,
                    [float("nan") if y is None else y for y in ys],
                    color=colors[series],
                    linestyle=styles[bi % len(styles)],
                    marker=markers[bi % len(markers)],
                    markersize=4,
                    label=(f"{series} ({names[series]})" if bi == 0 else series)
                    + (f", block {block}" if len(blocks) > 1 else ""),
                )
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("tokens", fontsize=8)
        ax.set_ylabel("GB/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if len(blocks) > 1 else 1)

    for ax, (bench, brow) in zip(flat[len(line_panels) :], bar_panels.items(), strict=False):
        width = 0.27
        for si, series in enumerate(("ours", "baseline", "limit")):
            ys = [r.get(series) for r in brow]
            if all(y is None for y in ys):
                continue
            ax.bar(
                [i + (si - 1) * width for i in range(len(brow))],
                [0.0 if y is None else y for y in ys],
                width,
                color=colors[series],
                label=series,
            )
        ax.set_xticks(range(len(brow)))
        ax.set_xticklabels([str(r["case"]) for r in brow], fontsize=6, rotation=20, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{bench} (GB/s, log): baseline = {brow[0].get('baseline_name')}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=6)

    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
