"""The vLLM connector's vLLM-free parts: layout detection, the lookup socket, config overrides.

These run without vLLM installed. The layout views are checked against the naive reference:
a row read through the detected layout must be the bytes vLLM's backend reads for that token.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache_native.engine.keys import KeyExtras, MMPlaceholder
from lmcache_native.integration.vllm.config import load_config, overrides_from_extra_config
from lmcache_native.integration.vllm.layout import (
    LayerGeometry,
    UnsupportedLayoutError,
    detect_layout,
)
from lmcache_native.integration.vllm.lookup import LookupClient, LookupServer, socket_path
from lmcache_native.testing import reference

B, H, N, D = 6, 2, 16, 8  # blocks, kv heads, block size, head size


def _geo(
    backend: str, use_mla: bool = False, head_size: int = D, cpu_isa: str | None = "vec"
) -> dict[str, LayerGeometry]:
    isa = cpu_isa if backend == "CPU_ATTN" else None
    g = LayerGeometry(backend, 1 if use_mla else H, head_size, N, use_mla, cpu_isa=isa)
    return {"l0": g, "l1": g}


def _filled(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**31), 2**31 - 1, shape, generator=gen, dtype=torch.int32).view(
        torch.float32
    )


def test_unified_gpu_layout_becomes_a_flash_attn_view_of_the_same_memory() -> None:
    # vLLM >= 0.32: logical [B, H, N, 2D] (K in [..., :D], V in [..., D:]), physical order
    # permuted (here [B, N, H, 2D] memory, the LBNHC layout).
    phys = [_filled((B, N, H, 2 * D), s) for s in (1, 2)]
    caches = {f"l{i}": t.permute(0, 2, 1, 3) for i, t in enumerate(phys)}
    det = detect_layout(caches, _geo("FLASH_ATTN"))
    assert det.layout == "flash_attn"
    for name, view in det.kv_caches.items():
        t = caches[name]
        assert view.data_ptr() == t.data_ptr()
        assert tuple(view.shape) == (2, B, N, H, D)
        for slot in (0, 5, B * N - 1):
            blk, off = divmod(slot, N)
            for kv in (0, 1):
                want = t[blk, :, off, kv * D : (kv + 1) * D].reshape(-1)
                got = reference.kv_row(view, "flash_attn", kv, slot)
                assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_cpu_backend_layout_is_vllm_cpu_as_is() -> None:
    caches = {"l0": _filled((B, H, N, 2 * D), 3), "l1": _filled((B, H, N, 2 * D), 4)}
    det = detect_layout(caches, _geo("CPU_ATTN"))
    assert det.layout == "vllm_cpu"
    assert all(det.kv_caches[k] is caches[k] for k in caches)


@pytest.mark.parametrize("isa", ["vec", "vec16"])
def test_cpu_backend_isas_with_the_vllm_cpu_packing_are_accepted(isa: str) -> None:
    caches = {"l0": _filled((B, H, N, 2 * D), 3), "l1": _filled((B, H, N, 2 * D), 4)}
    assert detect_layout(caches, _geo("CPU_ATTN", cpu_isa=isa)).layout == "vllm_cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cpu_backend_amx_isa_is_the_amx_packed_layout(dtype: torch.dtype) -> None:
    geo = LayerGeometry("CPU_ATTN", H, 16, 32, cpu_isa="amx")
    caches = {f"l{i}": torch.zeros(B, H, 32, 2 * 16, dtype=dtype) for i in range(2)}
    det = detect_layout(caches, {"l0": geo, "l1": geo})
    assert det.layout == "vllm_cpu_amx"
    assert all(det.kv_caches[k] is caches[k] for k in caches)


@pytest.mark.parametrize(
    ("isa", "dtype", "match"),
    [
        ("amx", torch.bfloat16, "ISA 'amx'.*multiples of 16"),  # head size 8: no AMX packing
        ("amx", torch.uint8, "fp8"),  # quantised cache
        ("neon", torch.float16, "ISA 'neon'"),  # not checked against vLLM: refused
        (None, torch.float32, "ISA None"),  # unknown: refused, never guessed
        ("vec", torch.uint8, "fp8"),  # quantised cache
    ],
)
def test_cpu_backend_isas_of_other_packings_are_refused(
    isa: str | None, dtype: torch.dtype, match: str
) -> None:
    caches = {f"l{i}": torch.zeros(B, H, N, 2 * D, dtype=dtype) for i in range(2)}
    with pytest.raises(UnsupportedLayoutError, match=match):
        detect_layout(caches, _geo("CPU_ATTN", cpu_isa=isa))


def test_legacy_flash_attn_and_flashinfer_layouts() -> None:
    fa = {"l0": _filled((2, B, N, H, D), 5), "l1": _filled((2, B, N, H, D), 6)}
    assert detect_layout(fa, _geo("FLASH_ATTN")).layout == "flash_attn"
    # FlashInfer HND: logical [B, 2, N, H, D] over [B, 2, H, N, D] memory.
    fi = {f"l{i}": _filled((B, 2, H, N, D), 7 + i).permute(0, 1, 3, 2, 4) for i in range(2)}
    assert detect_layout(fi, _geo("FLASHINFER")).layout == "flashinfer"


def test_mla_layouts() -> None:
    c = 24
    three = {"l0": _filled((B, N, c), 8), "l1": _filled((B, N, c), 9)}
    assert detect_layout(three, _geo("FLASHMLA", True, c)).layout == "mla"
    four = {"l0": _filled((B, 1, N, c), 8), "l1": _filled((B, 1, N, c), 9)}
    det = detect_layout(four, _geo("FLASHMLA", True, c))
    assert det.layout == "mla"
    assert tuple(det.kv_caches["l0"].shape) == (B, N, c)


@pytest.mark.parametrize(
    ("shape", "geo", "match"),
    [
        ((B, H, N, 3 * D), _geo("FLASH_ATTN"), "expected"),  # content is not 2 * head_size
        ((B, H + 1, N, 2 * D), _geo("CPU_ATTN"), "expected"),  # wrong head count
        ((B, H, N + 3, 2 * D), _geo("FLASH_ATTN"), "expected"),  # block size does not divide
        ((3, B, N, H, D), _geo("FLASH_ATTN"), "expected"),  # neither K/V axis
        ((B, N, H * D), _geo("FLASH_ATTN"), "rank 3"),  # not MLA, rank 3
        ((B, 2, N, D), _geo("FLASHMLA", True), "not an MLA cache"),
    ],
)
def test_unknown_layouts_are_refused_with_the_reason(
    shape: tuple[int, ...], geo: dict[str, LayerGeometry], match: str
) -> None:
    caches = {"l0": torch.zeros(shape), "l1": torch.zeros(shape)}
    with pytest.raises(UnsupportedLayoutError, match=match):
        detect_layout(caches, geo)


def test_layer_without_geometry_or_mixed_layers_are_refused() -> None:
    t = torch.zeros(B, H, N, 2 * D)
    with pytest.raises(UnsupportedLayoutError, match="no attention layer"):
        detect_layout({"l0": t, "other": t.clone()}, _geo("CPU_ATTN"))
    with pytest.raises(UnsupportedLayoutError, match="dtype/device"):
        detect_layout({"l0": t, "l1": t.to(torch.float16)}, _geo("CPU_ATTN"))
    with pytest.raises(UnsupportedLayoutError, match="no KV cache"):
        detect_layout({}, _geo("CPU_ATTN"))


def test_lookup_over_a_unix_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    seen: list[list[int]] = []
    asked: list[tuple[str, Any]] = []

    def answer(rank: int):
        def fn(req_id: str, tokens: list[int], extras: Any) -> tuple[int, int]:
            seen.append(list(tokens))
            asked.append((req_id, extras))
            return (len(tokens) // 2 if rank == 0 else len(tokens) // 4), 16 * (rank + 1)

        return fn

    servers = [LookupServer.start("eng-1", r, answer(r)) for r in range(2)]
    try:
        assert Path(socket_path("eng-1", 0)).parent == tmp_path
        # Bypass the in-process table so the bytes really cross the socket.
        from lmcache_native.integration.vllm import lookup as lookup_mod

        monkeypatch.setattr(lookup_mod, "_local", {})
        client = LookupClient("eng-1", world_size=2)
        tokens = [5, 2**40, 7, 0] * 50
        assert client.lookup(tokens) == (50, 32)  # min over ranks, max min_retrieve
        assert seen == [tokens, tokens]
        assert client.lookup([1, 2, 3, 4]) == (1, 32)  # the connection is reused
        # The request id and the key extras cross the socket too.
        extras = KeyExtras("salt-ä", "adapter", 3, (MMPlaceholder("img-hash", 4, 10),))
        assert client.lookup([1, 2, 3, 4], "req-7", extras) == (1, 32)
        assert asked[-2:] == [("req-7", extras), ("req-7", extras)]
        assert asked[0] == ("", None)
        client.close()
    finally:
        for s in servers:
            s.stop()
    assert list(tmp_path.iterdir()) == []
    names = {t.name for t in threading.enumerate()}
    assert not any(n.startswith("lmcn-lookup") for n in names)


def test_lookup_in_process_and_unreachable_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    server = LookupServer.start("eng-2", 0, lambda _r, toks, _e: (len(toks), 0))
    try:
        assert LookupClient("eng-2", 1).lookup([1, 2, 3]) == (3, 0)
        # Rank 1 has no server: the whole lookup is a miss, never a crash.
        assert LookupClient("eng-2", 2).lookup([1, 2, 3]) == (0, 0)
    finally:
        server.stop()
    assert LookupClient("eng-2", 1).lookup([1, 2, 3]) == (0, 0)


def test_config_from_extra_config_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", "128")
    monkeypatch.setenv("LMCACHE_MIN_RETRIEVE_TOKENS", "32")
    extra = {
        "lmcache.chunk_size": 64,
        "lmcache.not_a_key": 1,
        "shared_storage_path": "/x",
    }
    assert overrides_from_extra_config(extra) == {"chunk_size": 64}
    cfg = load_config(extra)
    assert cfg.get("chunk_size") == 64
    assert cfg.get("min_retrieve_tokens") == 32
    assert load_config(None).get("chunk_size") == 128


def test_importing_the_package_does_not_import_vllm() -> None:
    code = (
        "import sys, lmcache_native, lmcache_native.integration.vllm as m\n"
        "import lmcache_native.integration.vllm.layout, lmcache_native.integration.vllm.lookup\n"
        "assert 'vllm' not in sys.modules, 'vllm imported'\n"
        "assert m.__all__ == ['LMCacheNativeConnector']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_config_file_then_env_then_extra_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "lmcache.yaml"
    f.write_text("chunk_size: 32\nlocal_disk: file:///tmp/x\nmin_retrieve_tokens: 8\n")
    monkeypatch.setenv("LMCACHE_CONFIG_FILE", str(f))
    monkeypatch.setenv("LMCACHE_MIN_RETRIEVE_TOKENS", "16")
    cfg = load_config({"lmcache.save_decode_cache": True})
    assert cfg.get("chunk_size") == 32  # file
    assert cfg.get("local_disk") == "/tmp/x"  # file, file:// stripped
    assert cfg.get("min_retrieve_tokens") == 16  # env over file
    assert cfg.get("save_decode_cache") is True  # extra_config
