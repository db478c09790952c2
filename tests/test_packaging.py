"""The package ships as promised: one torch-free extension, the API as a subpackage."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path

import lmcache_native
import pytest
from lmcache_native import _native


def test_api_is_shipped_as_a_subpackage() -> None:
    api = importlib.import_module("lmcache_native.api")
    assert api.__name__ == "lmcache_native.api"
    assert Path(api.__file__).name == "__init__.py"


def test_version_and_build_flags_are_exposed() -> None:
    assert isinstance(lmcache_native.HAS_CUDA, bool)
    assert lmcache_native.__version__ == _native.VERSION
    assert lmcache_native.__version__.count(".") >= 2
    commit = _native.COMMIT_ID
    assert commit == "NA" or (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_extension_never_links_libtorch() -> None:
    so = Path(_native.C.__file__)
    out = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True)
    needed = [line for line in out.stdout.splitlines() if "(NEEDED)" in line]
    assert needed, "readelf found no NEEDED entries"
    joined = "\n".join(needed)
    for lib in ("libtorch", "libc10", "libcudart.so", "libpython"):
        assert lib not in joined, f"_C links {lib}: {joined}"


def test_thread_count_can_be_set_and_restored() -> None:
    before = _native.num_threads()
    try:
        _native.set_num_threads(1)
        assert _native.num_threads() == 1
    finally:
        _native.set_num_threads(before)
    assert _native.num_threads() == before
    with pytest.raises(ValueError, match="n must be >= 1"):
        _native.set_num_threads(0)


def test_importing_the_package_does_not_import_vllm_or_litestar() -> None:
    code = (
        "import sys, lmcache_native, lmcache_native.ops; "
        "bad = [m for m in ('vllm', 'litestar') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([__import__("sys").executable, "-c", code], check=True)
