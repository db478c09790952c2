"""The combined table, the JSON file and the PNG plot of ``lmcache-native bench``."""

from __future__ import annotations

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
    "load",
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
    """Rows as a Markdown table (also readable in a terminal).

    Columns holding text are left-aligned, numeric ones right-aligned.
    """
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    left = {c for c in columns if any(isinstance(r.get(c), str) and r.get(c) != "-" for r in rows)}

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


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """Prints :func:`format_table` with an optional title line."""
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns), flush=True)


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
    """``"N rows; goal met in A of B rows with a goal"``."""
    judged = [r for r in rows if r.get("met") in ("yes", "no")]
    met = sum(r["met"] == "yes" for r in judged)
    return f"{len(rows)} rows; goal met in {met} of {len(judged)} rows with a goal"


def _short(names: set[str], fallback: str) -> str:
    """One name for a panel title: the name when all rows agree, else ``fallback``."""
    return next(iter(names)) if len(names) == 1 else fallback


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """A PNG of bandwidth: ours vs baseline vs limit.

    One panel per (copy layout, direction) and per MD5 layout: GB/s against tokens (log
    scale), one line style per block size. Slot-string and engine rows as grouped bars. One
    legend for the whole figure (colours: ours/baseline/limit; line styles: block sizes); each
    panel's title names its baseline and limit. Uses the Agg backend (no display needed).

    Raises:
        ImportError: matplotlib is not installed (``pip install 'lmcache-native[bench]'``).
        ValueError: no rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = {"ours": "tab:blue", "baseline": "tab:orange", "limit": "tab:green"}
    styles: list[Any] = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]

    line_panels: dict[str, list[dict[str, Any]]] = {}
    bar_panels: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["bench"] in ("copy", "md5"):
            line_panels.setdefault(f"{r['bench']}: {r['case']}", []).append(r)
        else:
            bar_panels.setdefault(r["bench"], []).append(r)
    panels = len(line_panels) + len(bar_panels)
    if panels == 0:
        raise ValueError("nothing to plot: no rows")
    all_blocks = sorted({r.get("block") or 0 for p in line_panels.values() for r in p})
    ncols = min(3, panels)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.1 * nrows + 0.9), squeeze=False)
    flat = [ax for row_axes in axes for ax in row_axes]

    def names(prow: Sequence[dict[str, Any]], key: str, fallback: str) -> str:
        return _short({str(r.get(key)) for r in prow}, fallback)

    for ax, (name, prow) in zip(flat, line_panels.items(), strict=False):
        for block in all_blocks:
            sel = sorted(
                (r for r in prow if (r.get("block") or 0) == block), key=lambda r: r["tokens"]
            )
            if not sel:
                continue
            bi = all_blocks.index(block)
            for series in ("ours", "baseline", "limit"):
                ys = [r.get(series) for r in sel]
                if all(y is None for y in ys):
                    continue
                ax.plot(
                    [r["tokens"] for r in sel],
                    [float("nan") if y is None else y for y in ys],
                    color=colors[series],
                    linestyle=styles[bi % len(styles)],
                    marker=markers[bi % len(markers)],
                    markersize=4,
                )
        ax.set_xscale("log", base=2)
        ax.set_title(
            f"{name}\nbaseline: {names(prow, 'baseline_name', 'see table')}; "
            f"limit: {names(prow, 'limit_name', 'see table')}",
            fontsize=8,
        )
        ax.set_xlabel("tokens", fontsize=8)
        ax.set_ylabel("GB/s", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)

    bar_titles = {"slot": "slot strings: parse + compress", "engine": "engine vs raw kernels"}
    for ax, (bench, brow) in zip(flat[len(line_panels) :], bar_panels.items(), strict=False):
        width = 0.27
        values = []
        for si, series in enumerate(("ours", "baseline", "limit")):
            ys = [r.get(series) for r in brow]
            if all(y is None for y in ys):
                continue
            values += [y for y in ys if y]
            ax.bar(
                [i + (si - 1) * width for i in range(len(brow))],
                [0.0 if y is None else y for y in ys],
                width,
                color=colors[series],
            )
        ax.set_xticks(range(len(brow)))
        ax.set_xticklabels([str(r["case"]) for r in brow], fontsize=7, rotation=15, ha="right")
        log = bool(values) and max(values) / min(values) > 20
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("GB/s" + (" (log)" if log else ""), fontsize=8)
        ax.set_title(
            f"{bar_titles.get(bench, bench)}\nbaseline: "
            f"{names(brow, 'baseline_name', 'the raw kernel')}",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)

    for ax in flat[panels:]:
        ax.set_visible(False)
    handles: list[Any] = [Patch(color=c, label=k) for k, c in colors.items()]
    if len(all_blocks) > 1:
        handles += [
            Line2D(
                [],
                [],
                color="gray",
                linestyle=styles[i % len(styles)],
                marker=markers[i % len(markers)],
                label=f"block {b}",
            )
            for i, b in enumerate(all_blocks)
        ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
