"""Rows of the combined table and the goals they are judged against.

A *row* is a plain dict with these keys (``None`` where not measured):

``bench``, ``case``, ``tokens``, ``block``, ``MB`` (payload), ``ours``, ``baseline``, ``limit``
(GB/s), ``ours/base``, ``ours/limit`` (ratios; above 1 we are faster), ``ours_ms``, ``goal``
(the target, as text; ``-`` where no goal covers the case), ``met`` (``yes``/``no`` on every
row with a goal, ``-`` otherwise), ``load`` (the 1-minute load average when the case started),
``ours_name``, ``baseline_name``, ``limit_name`` (what was timed), and free-form extras.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmcache_native.bench._util import ratio

#: A goal: its text and a test of a row.
Goal = tuple[str, Callable[[dict[str, Any]], bool]]


def at_least(key: str, value: float) -> Callable[[dict[str, Any]], bool]:
    """A goal test: ``row[key] >= value``."""
    return lambda row: row[key] >= value


def all_of(*tests: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """A goal test that every test passes."""
    return lambda row: all(t(row) for t in tests)


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
    goal: Goal | None = None,
    in_scope: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Builds one combined-table row; ratios are bandwidth ratios (time ratios, same bytes).

    Args:
        bench: ``copy``, ``md5``, ``slot`` or ``engine``.
        case: what the row measures, e.g. ``"flash_attn gather"``.
        ours: our GB/s (``None``: not measured).
        baseline: the baseline's GB/s.
        limit: the limit's GB/s.
        names: what ours, the baseline and the limit are.
        tokens: the case's tokens (slots for slot strings).
        block: the block size.
        payload_mb: the payload in MB.
        ours_ms: our time per call.
        goal: the target as text and a test of the row, or ``None``.
        in_scope: whether the goal covers this case (each goal is stated for given sizes, e.g.
            copies of ``llama3-8b`` at 1K-32K tokens); out of scope the row has no goal.
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
    if goal is None or not in_scope:
        row["goal"], row["met"] = "-", "-"
    else:
        row["goal"] = goal[0]
        try:
            row["met"] = "yes" if goal[1](row) else "no"
        except TypeError:  # a ratio the goal needs is missing: not met
            row["met"] = "no"
    row.update(extra)
    return row


def figures(row: dict[str, Any], ours: str, baseline: str, limit: str) -> dict[str, float | None]:
    """``ours``, ``baseline`` and ``limit`` of a benchmark's ``row`` (its keys for them given)."""
    return {
        "ours": number(row.get(ours)),
        "baseline": number(row.get(baseline)),
        "limit": number(row.get(limit)),
    }


def number(v: Any) -> float | None:
    """A JSON-like number as float; ``None`` for missing, NaN or non-numbers."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return None if v != v else v
