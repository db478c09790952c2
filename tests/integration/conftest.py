"""Fixtures shared by the vLLM integration tests (helpers live in ``vllm_testlib``)."""

from __future__ import annotations

import pytest
import vllm_testlib as vt


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The directory of a tiny Llama (``config.json`` only; vLLM loads dummy weights)."""
    return vt.write_model(tmp_path_factory.mktemp("tiny-llama"))
