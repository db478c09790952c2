"""The wheel installs and runs on a machine with no compiler and no CMake.

The wheel under test is ``LMC_TEST_WHEEL`` (CI points it at the release wheel of
``scripts/build_wheel.sh``, built with the CUDA kernels); without it the test builds a wheel of
this checkout with the development venv's build tools. It is installed into a fresh venv whose
``PATH`` holds no compiler, with ``--only-binary :all:`` so pip can build nothing, then imported,
its CPU ops checked against the references, and ``lmcache-native serve`` run from it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "cmake", "nvcc", "ninja", "make")
# What the fresh venv may find on PATH besides its own bin/: a shell and coreutils for pip and
# the package; none of them compiles anything.
TOOLS = ("sh", "bash", "env", "uname", "ls", "cat", "readelf", "ldconfig")


@dataclass(frozen=True)
class FreshVenv:
    """A venv holding only the wheel and its dependencies, and the environment to run it in."""

    wheel: Path
    python: Path
    bin: Path
    env: dict[str, str]
    expect_cuda: bool

    def run(self, code: str) -> str:
        out = subprocess.run(
            [str(self.python), "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


def _build_wheel(out: Path) -> Path:
    """A wheel of this checkout (CPU kernels only).

    Built with the running venv's build tools in a build tree of its own (the development install's
    tree under build/ stays as it is).
    """
    env = dict(os.environ, LMC_CUDA="OFF")
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-C", f"build-dir={out / 'build'}", "-w", str(out), str(ROOT)),
        ],
        env=env,
        check=True,
        timeout=900,
    )
    (wheel,) = out.glob("lmcache_native-*.whl")
    return wheel


def _tools_dir(path: Path) -> Path:
    path.mkdir()
    for name in TOOLS:
        found = shutil.which(name)
        if found:
            (path / name).symlink_to(found)
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    tmp = tmp_path_factory.mktemp("wheel")
    given = os.environ.get("LMC_TEST_WHEEL")
    if given:
        wheel = Path(given).resolve()
        expect_cuda = os.environ.get("LMC_CUDA", "").upper() == "ON"
    else:
        wheel = _build_wheel(tmp / "dist")
        expect_cuda = False
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "LANG", "LC_", "HOME"))}
    env["PATH"] = f"{bin_dir}:{_tools_dir(tmp / 'tools')}"
    env["VIRTUAL_ENV"] = str(venv)
    pip = [str(bin_dir / "pip"), "install", "-q", "--only-binary", ":all:"]
    subprocess.run([*pip, "torch==2.13.0"], env=env, check=True, timeout=900, cwd="/")
    subprocess.run([*pip, str(wheel)], env=env, check=True, timeout=900, cwd="/")
    return FreshVenv(wheel, bin_dir / "python", bin_dir, env, expect_cuda)


def test_the_fresh_venv_has_no_compiler(fresh: FreshVenv) -> None:
    found = fresh.run(
        f"import json, shutil; print(json.dumps({{c: shutil.which(c) for c in {COMPILERS!r}}}))"
    )
    assert json.loads(found) == dict.fromkeys(COMPILERS)


def test_the_wheel_holds_no_torch_and_no_grafted_libraries(fresh: FreshVenv) -> None:
    names = zipfile.ZipFile(fresh.wheel).namelist()
    assert "lmcache_native/api/__init__.py" in names
    assert any(n.startswith("lmcache_native/_C") and n.endswith(".so") for n in names)
    assert not [n for n in names if n.startswith(("torch/", "lmcache_native.libs/"))]
    assert not [n for n in names if n.endswith(".so") and "_C" not in n]


def test_the_installed_extension_links_no_torch_and_no_cuda_runtime(fresh: FreshVenv) -> None:
    so = fresh.run("import lmcache_native._C as c; print(c.__file__)").strip()
    assert so.startswith(str(fresh.python.parent.parent)), so
    if shutil.which("readelf") is None:
        pytest.fail("readelf (binutils) is needed to check the extension's NEEDED entries")
    out = subprocess.run(["readelf", "-d", so], capture_output=True, text=True, check=True)
    needed = "\n".join(line for line in out.stdout.splitlines() if "(NEEDED)" in line)
    assert "libc.so" in needed
    for lib in ("libtorch", "libc10", "libcudart.so", "libpython"):
        assert lib not in needed, needed


def test_it_imports_with_the_expected_kernels(fresh: FreshVenv) -> None:
    info = json.loads(
        fresh.run(
            "import json, lmcache_native as l, lmcache_native._C as c; "
            "print(json.dumps({'version': l.__version__, 'cuda': l.HAS_CUDA, "
            "'archs': [a for a in c.CUDA_ARCHS.split(',') if a]}))"
        )
    )
    assert info["version"].count(".") >= 2
    assert info["cuda"] is fresh.expect_cuda
    if fresh.expect_cuda:
        # SASS for Ampere, Hopper and Blackwell, and PTX ("100", not "100-real") for newer GPUs
        assert {"80", "90", "100"} <= {a.split("-")[0] for a in info["archs"]}, info
        assert "100" in info["archs"], info
    else:
        assert info["archs"] == [], info


CPU_OPS = """
import torch
from lmcache_native import ops
from lmcache_native.testing import reference
g = torch.Generator().manual_seed(7)
shape = ops.kv_cache_shape("flash_attn", num_blocks=8, block_size=16, num_heads=2, head_size=64)
caches = [torch.randint(-2**15, 2**15, shape, generator=g, dtype=torch.int16).view(torch.bfloat16)
          for _ in range(3)]
slots = [5, 17, -1, 127, 0]
got = torch.zeros(2, 3, len(slots), 128, dtype=torch.bfloat16)
want = torch.zeros_like(got)
ops.paged_kv_gather(caches, torch.tensor(slots), got, "flash_attn")
reference.paged_kv_gather(caches, slots, want, "flash_attn")
assert got.view(torch.int16).equal(want.view(torch.int16))
assert ops.kv_chunk_md5(caches, slots, 2, "flash_attn") == reference.kv_chunk_md5(
    caches, slots, 2, "flash_attn")
print("ok")
"""


def test_cpu_ops_match_the_references(fresh: FreshVenv) -> None:
    assert fresh.run(CPU_OPS).strip() == "ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(fresh: FreshVenv) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(fresh.bin / "lmcache-native"), "serve", "--port", str(port)],
        env=fresh.env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("lmcache-native serve from the wheel did not answer in 120 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _call(url: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def test_serve_from_the_wheel_stores_and_retrieves(served: str) -> None:
    assert _call(f"{served}/health")["kv_cache_registered"] is True
    stored = _call(f"{served}/cache/store?tokens_mock=0,512", "POST")
    assert stored["num_stored_tokens"] == 512
    retrieved = _call(f"{served}/cache/retrieve?tokens_mock=0,512", "POST")
    assert retrieved["num_retrieved"] == 512
