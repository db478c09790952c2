"""Version & Info endpoints.

``/lmc_version``, ``/commit_id``, ``/version``, ``/inference_info``, ``/inference_version``.
"""

from __future__ import annotations

import importlib.metadata

from litestar import Controller, MediaType, get
from lmcache_native import COMMIT_ID, VERSION
from lmcache_native.api.deps import HostInfoDep, MaybeEngineDep
from lmcache_native.api.schemas import InferenceInfo, InferenceVersion

from ..routes import optional, route


def installed_vllm_version() -> str | None:
    """The installed vLLM distribution's version, or ``None``; never imports vLLM."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


class VersionController(Controller):
    """Version strings of this package and of the inference framework."""

    tags = ("version",)

    @route(get, "/lmc_version", "LMCache Version", media_type=MediaType.TEXT)
    async def lmc_version(self) -> str:
        """The lmcache-native version string."""
        return str(VERSION)

    @route(get, "/commit_id", "LMCache Commit ID", media_type=MediaType.TEXT)
    async def commit_id(self) -> str:
        """The git commit the package was built from ("NA" when unknown)."""
        return str(COMMIT_ID)

    @route(get, "/version", "Full Version Info", media_type=MediaType.TEXT)
    async def version(self) -> str:
        """``<version>-<commit id>``."""
        return f"{VERSION}-{COMMIT_ID}"

    @route(get, "/inference_version", "vLLM Version")
    async def inference_version(self) -> InferenceVersion:
        """The installed vLLM version (null when vLLM is not installed)."""
        return InferenceVersion(vllm_version=installed_vllm_version())

    @route(
        get,
        "/inference_info",
        "Inference Information",
        400,
        error_title="Failed to get inference info",
    )
    def inference_info(
        self,
        maybe_engine: MaybeEngineDep,
        host_info: HostInfoDep,
        format: str | None = optional("Reserved for future use."),
    ) -> InferenceInfo:
        """The vLLM and engine details: versions, engine metadata, KV cache, host details."""
        del format  # the spec reserves the parameter; no format is defined yet
        engine_meta = kv = None
        if maybe_engine is not None:
            engine_meta = maybe_engine.metadata_dict()
            if maybe_engine.has_kv_caches:
                kv = maybe_engine.kv_info()
        return InferenceInfo(
            vllm_version=installed_vllm_version(),
            lmcache_native_version=VERSION,
            commit_id=COMMIT_ID,
            engine=engine_meta,
            kv_cache=kv,
            inference=host_info() if host_info is not None else None,
        )
