"""Shared pytest configuration: the `cuda` marker skips only when no GPU build or device."""

from __future__ import annotations

import pytest
import torch

import lmcache_native


def _cuda_usable() -> bool:
    return bool(lmcache_native.HAS_CUDA) and torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_usable():
        return
    reason = (
        "needs an NVIDIA GPU and a CUDA build "
        f"(HAS_CUDA={lmcache_native.HAS_CUDA}, torch.cuda.is_available()={torch.cuda.is_available()})"
    )
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
