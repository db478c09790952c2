"""The one slot-mapping check and the engine's tier accessors for its callers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lmcache_native.engine.slots import MAX_INVALID_SHOWN, check_slot_mapping
from lmcache_native.errors import InvalidSlotsError, UnknownBackendError

from tests.engine.conftest import MakeEngine


def test_valid_mapping_becomes_a_cpu_int64_copy() -> None:
    slots = check_slot_mapping(torch.tensor([3, -1, 7], dtype=torch.int32), 3, 8)
    assert slots.dtype == torch.int64
    assert slots.tolist() == [3, -1, 7]
    assert check_slot_mapping([0, 1], None, 2).tolist() == [0, 1]
    assert check_slot_mapping(torch.empty(0, dtype=torch.int64), 0, 1).numel() == 0


@pytest.mark.parametrize(
    ("mapping", "num_tokens", "error", "match"),
    [
        (torch.zeros(2, 2, dtype=torch.int64), 4, ValueError, "1-D"),
        (torch.zeros(3), 3, TypeError, "integers"),
        (torch.zeros(3, dtype=torch.bool), 3, TypeError, "integers"),
        (torch.arange(3), 4, ValueError, "3 slots for 4 tokens"),
        (torch.tensor([0, 8]), 2, InvalidSlotsError, "min 0, max 8"),
        (torch.tensor([-2, 1]), 2, InvalidSlotsError, r"outside \[-1, 8\)"),
    ],
)
def test_bad_mappings_are_refused(
    mapping: torch.Tensor, num_tokens: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        check_slot_mapping(mapping, num_tokens, 8)


def test_without_padding_the_error_names_the_bad_slots() -> None:
    with pytest.raises(InvalidSlotsError) as ei:
        check_slot_mapping(torch.tensor([1, -1, 8]), None, 8, allow_padding=False)
    assert str(ei.value) == "Slot indices out of bounds: [-1, 8]. Valid range: 0 to 7"
    many = torch.full((MAX_INVALID_SHOWN + 3,), 9)
    with pytest.raises(InvalidSlotsError, match=r"\(and 3 more\)"):
        check_slot_mapping(many, None, 8, allow_padding=False)


def test_store_tier_skips_bypassed_tiers_and_a_cold_cpu_tier(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = make_engine(local_disk=str(tmp_path / "disk"))
    assert e.all_backends() == ["LocalCPUBackend", "LocalDiskBackend"]
    tier = e.store_tier()
    assert tier is not None
    assert tier.name == "LocalCPUBackend"
    e.set_hot_cache(False)
    tier = e.store_tier()
    assert tier is not None
    assert tier.name == "LocalDiskBackend"
    e.set_hot_cache(True)
    e.bypass_add("LocalCPUBackend")
    assert e.store_tier() is e.backend("LocalDiskBackend")
    e.bypass_add("LocalDiskBackend")
    assert e.store_tier() is None


def test_backend_by_name(make_engine: MakeEngine) -> None:
    e = make_engine()
    assert e.backend("LocalCPUBackend").name == "LocalCPUBackend"
    with pytest.raises(UnknownBackendError):
        e.backend("NoSuchBackend")
