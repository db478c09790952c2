"""Configuration & Metadata: ``GET/POST /conf``, ``GET /meta``."""

from __future__ import annotations

from typing import Any, Union

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter
from lmcache_native.api.deps import ConfigDep, EngineDep
from lmcache_native.api.errors import error_responses
from lmcache_native.api.schemas import ConfUpdateResult, ErrorBody

_NAMES = Parameter(
    default=None,
    required=False,
    description="Comma-separated names to return (unknown names are left out).",
)


def split_names(names: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``None``/blank -> ``None`` (no filter)."""
    if names is None:
        return None
    out = [n.strip() for n in names.split(",") if n.strip()]
    return out or None


def _filter(values: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    if names is None:
        return values
    return {n: values[n] for n in names if n in values}


class ConfigurationController(Controller):
    """Read and update the engine configuration; read the engine metadata."""

    tags = ["configuration"]

    @get("/conf", sync_to_thread=True, summary="Get Configuration", responses=error_responses(400))
    def get_conf(self, config: ConfigDep, names: str | None = _NAMES) -> dict[str, Any]:
        """Current configuration values (secrets such as the API key are masked)."""
        return _filter(config.to_dict(), split_names(names))

    @post(
        "/conf",
        summary="Update Configuration (Experimental)",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(
            413,
            s400=ResponseSpec(
                data_container=Union[ConfUpdateResult, ErrorBody],  # noqa: UP007
                description=(
                    'Some keys were not set (``updated`` + ``errors``: "Unknown config", '
                    '"Config is not mutable at runtime", or the expected type), '
                    "or the body is not a JSON object"
                ),
                generate_examples=False,
            ),
        ),
    )
    def post_conf(
        self, config: ConfigDep, data: JSONBody[dict[str, Any]]
    ) -> Response[ConfUpdateResult]:
        """Updates several keys at once; 400 (with what was updated) when any key failed."""
        updated, errors = config.update(data)
        # Report the stored (coerced, secret-masked) values rather than the raw input.
        current = config.to_dict()
        shown = {k: current.get(k, v) for k, v in updated.items()}
        if errors:
            return Response(ConfUpdateResult(updated=shown, errors=dict(errors)), status_code=400)
        return Response(ConfUpdateResult(updated=shown), status_code=200)

    @get(
        "/meta", summary="Engine Metadata", sync_to_thread=True, responses=error_responses(400, 503)
    )
    def get_meta(self, engine: EngineDep, names: str | None = _NAMES) -> dict[str, Any]:
        """Engine metadata (worker_id, world_size, model_name, kv_shape, kv_dtype, ...)."""
        return _filter(engine.metadata_dict(), split_names(names))
