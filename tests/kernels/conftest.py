"""Fixtures of the kernel tests (their helpers live in kernel_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lmcache_native.ops import copy_isa, copy_set_isa, copy_supported_isas


@pytest.fixture(params=copy_supported_isas())
def each_copy_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces each CPU copy instruction set (``sse2``, ``avx2``) in turn, then restores it.

    Copy test modules use it for every test with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    before = copy_isa()
    copy_set_isa(request.param)
    yield request.param
    copy_set_isa(before)
