"""The only importer of the compiled module ``lmcache_native._C``.

Everything else reaches the kernels through :mod:`lmcache_native.ops`. ``_C.pyi`` documents
the compiled module's functions and types.
"""

from __future__ import annotations

_BUILD_HINT = (
    "lmcache_native._C is not built. Build it with `pip install .` (or "
    "`pip install -e . --no-build-isolation` for development) from the project root; "
    "set LMC_CUDA=ON to require the CUDA kernels, LMC_CUDA=OFF to skip them."
)

try:
    from lmcache_native import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(f"{_BUILD_HINT} (import error: {exc})") from exc

#: The compiled module (typed by ``_C.pyi``).
C = _C
HAS_CUDA: bool = bool(C.HAS_CUDA)
VERSION: str = str(C.__version__)
COMMIT_ID: str = str(C.COMMIT_ID)
CudaError: type[RuntimeError] = C.CudaError
#: The paged-KV layout as the kernels take it (``csrc/kernels/paged_kv_layout.h``).
PagedKVLayout = C.PagedKVLayout


def require_cuda(what: str) -> None:
    """Raises a clear error when a CUDA op is called on a build without CUDA kernels.

    Args:
        what: the op name, used in the message.
    """
    if not HAS_CUDA:
        raise RuntimeError(
            f"{what}: lmcache_native was built without CUDA kernels (LMC_CUDA=OFF or no nvcc "
            "at build time). Rebuild with `LMC_CUDA=ON pip install .` on a machine with nvcc."
        )


def num_threads() -> int:
    """Threads used by the CPU twins."""
    return int(C.num_threads())


def set_num_threads(n: int) -> None:
    """Sets the threads used by the CPU twins (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    C.set_num_threads(int(n))
