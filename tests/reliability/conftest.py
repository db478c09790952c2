"""Fixtures of the reliability tests: a clean environment and engines over real tiers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_testlib import MakeEngine, clear_config_env, engine_factory
from reliability_lib import CHUNK, LAYOUT, MODEL


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_config_env(monkeypatch)


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    """``make_engine(caches, model=MODEL, **config)`` -> a registered engine (closed after)."""
    with engine_factory(CHUNK, LAYOUT, MODEL) as make:
        yield make
