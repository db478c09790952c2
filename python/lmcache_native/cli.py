"""The ``lmcache-native`` command.

``lmcache-native bench`` runs every benchmark and prints one table (see
``lmcache_native.bench.runner``).

``lmcache-native serve`` runs a standalone engine with its own paged KV cache on the CPU
(filled with seeded random data) and serves the admin API, so every endpoint can be driven
with curl on a laptop::

    lmcache-native serve                      # http://127.0.0.1:7000
    lmcache-native serve --port 0             # any free port (printed)
    lmcache-native serve --config lmcache.yaml --num-layers 32 --num-blocks 4096
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import torch

from lmcache_native.ops import kv_cache_shape

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "fp8_e5m2": torch.float8_e5m2,
}

DEFAULT_MAX_TOKENS = 16384


def make_kv_caches(
    num_layers: int,
    layout: str,
    num_blocks: int,
    block_size: int,
    num_heads: int,
    head_size: int,
    dtype: torch.dtype,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Per-layer paged caches on the CPU, filled with seeded random bytes.

    The bytes are drawn as integers and viewed as ``dtype``, so every bit pattern (NaN and Inf
    included) can occur; the same seed gives the same cache on every machine.

    Returns:
        ``{"layer_0": tensor, ...}`` in layer order, each shaped for ``layout``.
    """
    shape = kv_cache_shape(layout, num_blocks, block_size, num_heads, head_size)
    elem = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for dim in shape:
        numel *= dim
    gen = torch.Generator().manual_seed(seed)
    caches: dict[str, torch.Tensor] = {}
    for i in range(num_layers):
        raw = torch.randint(0, 256, (numel * elem,), dtype=torch.uint8, generator=gen)
        caches[f"layer_{i}"] = raw.view(dtype).view(shape)
    return caches


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmcache-native", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="standalone engine with its own CPU paged KV cache, plus the admin API",
        description=(
            "Runs an engine with its own paged KV cache on the CPU (seeded random data), "
            "LocalCPUBackend plus the tiers the configuration names, chunk statistics on, "
            "and the admin API. Stop with Ctrl-C or SIGTERM."
        ),
    )
    serve.add_argument(
        "--host", default=None, help="listen address (default: internal_api_server_host, 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help="listen port; 0 picks a free one (default: internal_api_server_port_start + 1, "
        "i.e. 7000)",
    )
    serve.add_argument(
        "--config",
        default=None,
        help="LMCache YAML/JSON config file (else LMCACHE_CONFIG_FILE; LMCACHE_* env vars apply)",
    )
    serve.add_argument("--model-name", default="lmcache-native/serve", help="model name in keys")
    serve.add_argument("--num-layers", type=int, default=4)
    serve.add_argument("--num-kv-heads", type=int, default=8)
    serve.add_argument("--head-size", type=int, default=128)
    serve.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES))
    serve.add_argument("--block-size", type=int, default=16)
    serve.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help=f"blocks per layer (default: enough for {DEFAULT_MAX_TOKENS} tokens)",
    )
    serve.add_argument(
        "--layout",
        default="flash_attn",
        choices=["flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu"],
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of the random KV contents")
    serve.add_argument(
        "--no-chunk-statistics",
        action="store_true",
        help="leave enable_chunk_statistics as configured (default: force it on)",
    )
    serve.add_argument("--log-level", default="warning", help="server log level")
    from lmcache_native.bench import runner as bench_runner

    bench = sub.add_parser(
        "bench",
        help="run every benchmark: one table (ours, baseline, limit, ratios), --json, --plot",
        description=bench_runner.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_runner.add_arguments(bench)
    bench.set_defaults(_bench_parser=bench)
    doctor = sub.add_parser(
        "doctor",
        help="check this machine for vLLM + lmcache-native: versions, kernels, GPU, CPU ISA, "
        "config, tiers, admin port",
        description=(
            "Checks the machine where vLLM will run: Python/torch/vLLM, the extension's CUDA "
            "kernels, the GPU, the CPU ISA and the KV layout vLLM's CPU backend gives the "
            "connector, the configuration (secrets masked), every configured tier and the admin "
            "port. Each line is OK, WARN or FAIL with the fix; exit status 1 on any FAIL."
        ),
    )
    doctor.add_argument(
        "--config",
        default=None,
        help="LMCache YAML/JSON config file (else LMCACHE_CONFIG_FILE; LMCACHE_* env vars apply)",
    )
    doctor.add_argument(
        "--port",
        type=int,
        default=None,
        help="admin API port to check (default: internal_api_server_port_start + 1, i.e. 7000)",
    )
    doctor.add_argument(
        "--block-size",
        type=int,
        default=128,
        help="vLLM's KV block size, for the CPU layout lines (default: 128, vLLM's CPU default)",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: int) -> None:
    if value < 1:
        parser.error(f"--{name} must be >= 1, got {value}")


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs ``lmcache-native serve`` until SIGINT/SIGTERM; returns the exit code."""
    from lmcache_native.api import server
    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.engine import CacheEngine, EngineMetadata
    from lmcache_native.errors import LMCacheError

    for name in ("num_layers", "num_kv_heads", "head_size", "block_size"):
        _positive(parser, name.replace("_", "-"), getattr(args, name))
    num_blocks = args.num_blocks
    if num_blocks is None:
        num_blocks = -(-DEFAULT_MAX_TOKENS // args.block_size)
    _positive(parser, "num-blocks", num_blocks)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    overrides: dict[str, Any] = {}
    if not args.no_chunk_statistics:
        overrides["enable_chunk_statistics"] = True
    try:
        config = LMCacheEngineConfig.load(args.config, overrides=overrides)
    except (LMCacheError, OSError) as exc:
        print(f"lmcache-native serve: bad configuration: {exc}", file=sys.stderr)
        return 2

    dtype = _DTYPES[args.dtype]
    num_heads = 1 if args.layout == "mla" else args.num_kv_heads
    chunk_size = int(config.get("chunk_size"))
    metadata = EngineMetadata(
        model_name=args.model_name,
        world_size=1,
        worker_id=0,
        kv_dtype=dtype,
        use_mla=args.layout == "mla",
        role="standalone",
    )
    caches = make_kv_caches(
        args.num_layers,
        args.layout,
        num_blocks,
        args.block_size,
        num_heads,
        args.head_size,
        dtype,
        args.seed,
    )
    try:
        engine = CacheEngine(config, metadata)
    except LMCacheError as exc:
        print(f"lmcache-native serve: cannot start the engine: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    handle = None
    try:
        try:
            engine.register_kv_caches(caches, args.layout)
        except (LMCacheError, ValueError, TypeError) as exc:
            print(f"lmcache-native serve: cannot register the KV cache: {exc}", file=sys.stderr)
            return 2
        host = args.host or str(config.get("internal_api_server_host"))
        port = args.port
        if port is None:
            port = int(config.get("internal_api_server_port_start")) + 1
        try:
            handle = server.start(engine, config, host, port, log_level=args.log_level)
        except OSError as exc:
            print(f"lmcache-native serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        tokens = num_blocks * args.block_size
        auth = " (API key required)" if config.get("internal_api_server_api_key") else ""
        print(
            f"lmcache-native serve: admin API listening on {handle.url}{auth}\n"
            f"  KV cache: {args.num_layers} layers x {tokens} slots, layout {args.layout}, "
            f"{num_heads} heads x {args.head_size}, {dtype}, block {args.block_size}, "
            f"chunk_size {chunk_size}\n"
            f"  backends: {', '.join(engine.all_backends())}\n"
            f"  OpenAPI: {handle.url}/schema/openapi.json   stop: Ctrl-C",
            flush=True,
        )
        while not stop.wait(0.5):
            if not handle.running:
                print("lmcache-native serve: the server thread died", file=sys.stderr)
                return 1
        print("lmcache-native serve: stopping", flush=True)
        return 0
    finally:
        if handle is not None:
            handle.stop()
        engine.close()
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lmcache-native``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args, parser)
    if args.command == "doctor":
        from lmcache_native import doctor

        _positive(parser, "block-size", args.block_size)
        if args.port is not None and not 0 < args.port < 65536:
            parser.error(f"--port must be in 1..65535, got {args.port}")
        return doctor.main(args.config, args.port, args.json, args.block_size)
    if args.command == "bench":
        from lmcache_native.bench import runner as bench_runner

        words = list(sys.argv[1:] if argv is None else argv)
        command = " ".join(["lmcache-native", *words])
        return bench_runner.run(args, args._bench_parser, command=command)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
