"""The soak (``soak_lib.py`` beside this file) for 60 s, and its negative controls.

The soak is a separate process (its RSS and fd figures are its own). It must finish with no
mismatch, no stall, no unexpected exception, no admin API 5xx, bounded RSS/fd growth, and a
non-trivial amount of verified work. The negative controls prove that its checks can fail: a
run that stores wrong bytes for some keys must report mismatches, and a run with one hung
operation must report a stall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parent / "soak_lib.py"
SECONDS = float(os.environ.get("LMC_SOAK_SECONDS", "60"))


def _soak(*args: str, timeout: float) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")},
    )
    start = proc.stdout.find("{")
    assert start >= 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.returncode, json.loads(proc.stdout[start:]), proc.stderr


@pytest.mark.slow
@pytest.mark.redis
def test_soak_60_seconds():
    code, summary, stderr = _soak("--seconds", str(SECONDS), timeout=SECONDS + 180)
    print("\nsoak summary:", json.dumps({k: v for k, v in summary.items() if k != "tier_counters"}))
    assert summary["mismatches"] == 0, summary["first_failures"]
    assert summary["errors"] == 0, summary["first_failures"]
    assert summary["stalls"] == 0, summary["first_failures"]
    assert summary["admin_5xx"] == 0, summary["first_failures"]
    assert summary["bounded"], summary
    assert summary["tiers"] == ["LocalCPUBackend", "LocalDiskBackend", "RemoteBackend"]
    # Real work happened on every path: stores, verified retrieves, every chaos action.
    kinds = summary["ops_by_kind"]
    for kind in ("store", "retrieve", "lookup", "admin_get", "admin_check", "chaos_clear"):
        assert kinds.get(kind, 0) > 0, kinds
    assert summary["verified_chunks"] > 1000, summary
    tiers = summary["tier_counters"]
    assert tiers["LocalDiskBackend"]["hits"] > 0, tiers
    assert tiers["RemoteBackend"]["hits"] > 0, tiers
    assert all(t["checksum_failures"] == 0 for t in tiers.values()), tiers
    assert code == 0, stderr[-4000:]


@pytest.mark.slow
@pytest.mark.redis
def test_soak_detects_wrong_bytes():
    code, summary, _ = _soak("--seconds", "6", "--inject", "mismatch", timeout=180)
    assert code == 1
    assert summary["mismatches"] > 0
    assert summary["ok"] is False


@pytest.mark.slow
def test_soak_detects_a_stall():
    code, summary, _ = _soak(
        "--seconds", "8", "--no-redis", "--inject", "stall", "--stall-seconds", "2", timeout=180
    )
    assert code == 1
    assert summary["stalls"] >= 1
    assert any("running for" in f for f in summary["first_failures"]), summary
