"""Helpers for the end-to-end tests on a real vLLM: a tiny Llama, engines, prompts, chunk files.

vLLM is imported inside the functions only, so this module imports without vLLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONNECTOR = "LMCacheNativeConnector"
MODULE_PATH = "lmcache_native.integration.vllm"
BLOCK_SIZE = 32
CHUNK_SIZE = 64
MAX_TOKENS = 8
#: The model dtype of the engines (``LMC_TEST_VLLM_DTYPE=bfloat16`` runs the suite in bf16).
DTYPE = os.environ.get("LMC_TEST_VLLM_DTYPE", "float32")

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def write_model(directory: Path, overrides: dict[str, Any] | None = None) -> str:
    """Writes a Llama ``config.json`` (weights come from ``load_format="dummy"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(TINY_LLAMA, **(overrides or {}))
    (directory / "config.json").write_text(json.dumps(cfg))
    return str(directory)


def prompt(seed: int, n: int, prefix: Sequence[int] = ()) -> list[int]:
    """``n`` token ids in ``[3, 1000)``: ``prefix`` then seeded random tokens."""
    rng = random.Random(seed)
    out = list(prefix)
    while len(out) < n:
        out.append(rng.randrange(3, 1000))
    return out[:n]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kv_transfer_config(
    extra: dict[str, Any], module_path: bool = True, kv_role: str = "kv_both"
) -> dict[str, Any]:
    """VLLM's ``kv_transfer_config`` selecting the connector, with ``lmcache.*`` extras.

    Without ``module_path`` vLLM finds the connector by name, through the
    ``vllm.general_plugins`` entry point of the installed package.
    """
    cfg = {
        "kv_connector": CONNECTOR,
        "kv_role": kv_role,
        "kv_connector_extra_config": {f"lmcache.{k}": v for k, v in extra.items()},
    }
    if module_path:
        cfg["kv_connector_module_path"] = MODULE_PATH
    return cfg


def engine_kwargs(
    model: str,
    connector: dict[str, Any] | None,
    module_path: bool = True,
    kv_role: str = "kv_both",
    **overrides: Any,
) -> dict[str, Any]:
    """``LLM(...)`` arguments for the tests (``connector``.

    Lmcache keys, or None for none; ``overrides``: other ``LLM`` arguments).
    """
    kw: dict[str, Any] = {
        "model": model,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": DTYPE,
        "block_size": BLOCK_SIZE,
        "enable_prefix_caching": False,
        "enforce_eager": True,
        "seed": 0,
        "kv_cache_memory_bytes": 16 << 20,
        "max_model_len": 4096,
    }
    if connector is not None:
        kw["kv_transfer_config"] = kv_transfer_config(connector, module_path, kv_role)
    kw.update(overrides)
    return kw


@contextlib.contextmanager
def in_process_llm(
    model: str,
    connector: dict[str, Any] | None,
    module_path: bool = True,
    kv_role: str = "kv_both",
    **overrides: Any,
) -> Iterator[Any]:
    """An in-process vLLM engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``uni`` executor).

    The engine is shut down on exit (the connector's ``shutdown`` runs then).
    """
    from vllm import LLM

    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        llm = LLM(
            distributed_executor_backend="uni",
            **engine_kwargs(model, connector, module_path, kv_role, **overrides),
        )
        try:
            yield llm
        finally:
            llm.llm_engine.engine_core.shutdown()
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def report(name: str, data: dict[str, Any]) -> None:
    """Writes ``data`` (JSON-able parts) to ``$LMC_TEST_REPORT_DIR/<name>.json``.

    Only when that variable is set, so a run's measured figures can be quoted; does nothing
    otherwise.
    """
    directory = os.environ.get("LMC_TEST_REPORT_DIR")
    if not directory:
        return

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set)):
            return [plain(x) for x in (sorted(v) if isinstance(v, set) else v)]
        if isinstance(v, (int, float, str, bool)) or v is None:
            return v
        if hasattr(v, "__dataclass_fields__"):
            return {k: plain(getattr(v, k)) for k in v.__dataclass_fields__}
        return repr(v)

    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / f"{name}.json").write_text(json.dumps(plain(data), indent=1))


def generate(llm: Any, tokens: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[int], int]:
    """Greedy generation of one prompt: (generated token ids, ``num_cached_tokens``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False
    )
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)
    return list(out.outputs[0].token_ids), int(out.num_cached_tokens or 0)


def worker_connector() -> Any:
    """The worker-side connector of the in-process engine."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    return get_kv_transfer_group()


def scheduler_connector(llm: Any) -> Any:
    """The scheduler-side connector of the in-process engine."""
    return llm.llm_engine.engine_core.engine_core.scheduler.connector


# -- chunk files and checksums ---------------------------------------------------------------


def chunk_path(directory: Path, key: str) -> Path:
    """Where the disk tier keeps ``key``."""
    from lmcache_native.storage.serde import chunk_filename

    return directory / chunk_filename(key)


def read_chunk(path: Path, key: str) -> torch.Tensor:
    """A chunk file's payload as a tensor (verifying header and checksum)."""
    from lmcache_native.storage.serde import parse_header, verify_payload

    data = path.read_bytes()
    header = parse_header(data, key)
    payload = np.frombuffer(data, dtype=np.uint8, offset=header.header_len).copy()
    verify_payload(header, payload)
    return torch.from_numpy(payload).view(header.dtype).reshape(header.shape)


def rewrite_chunk(path: Path, key: str, tensor: torch.Tensor) -> None:
    """Replaces a chunk file's payload with ``tensor``, with a valid header and checksum."""
    from lmcache_native.storage.serde import write_chunk_file

    write_chunk_file(path, key, tensor.contiguous())


def break_payload(path: Path, byte_index: int = 0) -> None:
    """Flips one payload byte in place, leaving the header (and its payload checksum) as is."""
    from lmcache_native.storage.serde import parse_header

    data = bytearray(path.read_bytes())
    header = parse_header(bytes(data))
    data[header.header_len + byte_index] ^= 0x5A
    path.write_bytes(bytes(data))


def chunk_md5(chunk: torch.Tensor) -> str:
    """The admin API's non-layerwise checksum of one stored chunk ``[2, layers, tokens, row]``.

    Per layer: MD5 of the K rows then the V rows (raw bytes); then MD5 of the per-layer hex
    digests concatenated in layer order.
    """
    digests = []
    for layer in range(chunk.shape[1]):
        h = hashlib.md5()
        for kv in range(chunk.shape[0]):
            h.update(chunk[kv, layer].contiguous().view(torch.uint8).numpy().tobytes())
        digests.append(h.hexdigest())
    return hashlib.md5("".join(digests).encode()).hexdigest()


def slot_string(slots: Sequence[int]) -> str:
    """A ``slot_mapping`` query string, runs written as ``[a,b]``."""
    from lmcache_native.ops import compress_slot_mapping

    parts = []
    for item in compress_slot_mapping(list(slots)):
        parts.append(f"[{item[0]},{item[1]}]" if isinstance(item, list) else str(item))
    return ",".join(parts)


# -- the connector's sides without a vLLM engine ----------------------------------------------

#: Heads and head size of the small ``vllm_cpu`` caches of :func:`unit_worker`.
UNIT_HEADS, UNIT_HEAD_SIZE = 2, 16


def unit_worker(
    name: str, num_blocks: int, seed: int, **config: Any
) -> tuple[Any, list[torch.Tensor]]:
    """A connector worker side over a real engine, without a vLLM engine.

    Args:
        name: the engine id (names the lookup socket).
        num_blocks: blocks of each of the two ``vllm_cpu`` float32 layers
            ``[num_blocks, UNIT_HEADS, BLOCK_SIZE, 2 * UNIT_HEAD_SIZE]``, seeded random.
        seed: the caches' seed.
        **config: engine config keys (``chunk_size`` defaults to :data:`CHUNK_SIZE`).

    Returns:
        The ``WorkerSide`` with its engine registered on the caches, and the two caches.
    """
    from types import SimpleNamespace

    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.engine import CacheEngine, EngineMetadata
    from lmcache_native.integration.vllm.worker import WorkerSide

    cfg = LMCacheEngineConfig.from_defaults(**{"chunk_size": CHUNK_SIZE, **config})
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, UNIT_HEADS, BLOCK_SIZE, 2 * UNIT_HEAD_SIZE)
    caches = [torch.randn(*shape, generator=gen) for _ in range(2)]
    vllm_config = SimpleNamespace(cache_config=SimpleNamespace(block_size=BLOCK_SIZE))
    worker = WorkerSide(vllm_config, None, cfg, name, rank=0, world_size=1)
    engine = CacheEngine(cfg, EngineMetadata(model_name="m"))
    engine.register_kv_caches({"l0": caches[0], "l1": caches[1]}, "vllm_cpu")
    worker.engine = engine
    return worker, caches


@contextlib.contextmanager
def lookup_scheduler(name: str, lookup: Any, **extra_config: Any) -> Iterator[Any]:
    """A scheduler side asking ``lookup`` through a real lookup server; both stop on exit.

    Args:
        name: the engine id; ``LMCACHE_NATIVE_LOOKUP_DIR`` should name a private directory.
        lookup: the worker's answer, ``lookup(req_id, tokens, extras) -> (hit, min_retrieve)``.
        **extra_config: ``extra_config`` keys of the scheduler (``lookup_cache_secs``, ...).

    Yields:
        The ``SchedulerSide`` (``world_size`` 1, :data:`BLOCK_SIZE`, :data:`CHUNK_SIZE`).
    """
    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.integration.vllm.lookup import LookupServer
    from lmcache_native.integration.vllm.scheduler import SchedulerSide

    server = LookupServer.start(name, 0, lookup)
    try:
        extra = {"extra_config": extra_config} if extra_config else {}
        config = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK_SIZE, **extra)
        side = SchedulerSide(config, name, world_size=1, block_size=BLOCK_SIZE)
        try:
            yield side
        finally:
            side.close()
    finally:
        server.stop()


def baseline(model: str, prompts: dict[str, list[int]]) -> dict[str, list[int]]:
    """Tokens each prompt generates on ``model`` with no connector, by prompt name."""
    with in_process_llm(model, None) as llm:
        return {name: generate(llm, p)[0] for name, p in prompts.items()}


def admin_api_config(port: int, **extra: Any) -> dict[str, Any]:
    """Connector config with a 0.05 GB CPU tier and the admin API on ``port``.

    Args:
        port: the admin API port (the worker of rank 0 serves ``port_start + 1``).
        **extra: further config keys.
    """
    return {
        "chunk_size": CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "internal_api_server_enabled": True,
        "internal_api_server_port_start": port - 1,
        **extra,
    }


def request(req_id: str, prompt: list[int] | None, **fields: Any) -> Any:
    """A stand-in for vLLM's ``Request`` with the fields the connector reads.

    Args:
        req_id: the request id.
        prompt: the prompt's token ids (``None``: a prompt given as embeddings).
        **fields: fields to set or override (``cache_salt``, ``lora_request``, ...).
    """
    from types import SimpleNamespace

    base: dict[str, Any] = {
        "request_id": req_id,
        "prompt_token_ids": prompt,
        "all_token_ids": list(prompt or []),
        "num_prompt_tokens": len(prompt or []),
        "mm_features": [],
        "lora_request": None,
        "cache_salt": None,
        "prompt_embeds": None,
    }
    return SimpleNamespace(**{**base, **fields})


def record_save_threads(engine: Any) -> dict[str, list[str]]:
    """Records the thread of each ``stage_store`` and ``commit_store`` call of ``engine``.

    Wraps the two methods on the instance (``store`` calls them too). Returns the lists it
    appends to: ``{"stage": [thread names], "commit": [thread names]}``.
    """
    import threading

    seen: dict[str, list[str]] = {"stage": [], "commit": []}
    stage, commit = engine.stage_store, engine.commit_store

    def staged(*args: Any, **kwargs: Any) -> Any:
        seen["stage"].append(threading.current_thread().name)
        return stage(*args, **kwargs)

    def committed(staged_store: Any) -> Any:
        seen["commit"].append(threading.current_thread().name)
        return commit(staged_store)

    engine.stage_store, engine.commit_store = staged, committed
    return seen


def disk_tier_config(disk: Path, **extra: Any) -> dict[str, Any]:
    """Connector config: a 0.05 GB CPU tier over a 0.2 GB disk tier at ``disk``, and ``extra``."""
    return {
        "chunk_size": CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "local_disk": str(disk),
        "max_local_disk_size": 0.2,
        **extra,
    }
