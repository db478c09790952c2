"""Configuration & Metadata: ``GET/POST /conf``, ``GET /meta``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, HttpMethod, Response, get, post, route
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from lmcache_native.api.deps import ConfigDep, EngineDep
from lmcache_native.api.errors import ApiError, error_responses
from lmcache_native.api.schemas import ConfUpdateError, ConfUpdateResult
from lmcache_native.config import CONFIG_DEFINITIONS

from ..routes import optional

_NAMES = optional("Comma-separated names to return (unknown names are left out).")


_MAX_KEYS_LISTED = 10

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}


def conf_update_schema() -> dict[str, Any]:
    """JSON Schema of the ``POST /conf`` body: every runtime-mutable key with its type and bounds.

    Unknown and immutable keys are not in the schema; the endpoint answers them with 400 and
    names them in ``errors``.
    """
    properties: dict[str, Any] = {}
    for name, d in sorted(CONFIG_DEFINITIONS.items()):
        if not d.mutable:
            continue
        prop: dict[str, Any] = {"type": _JSON_TYPES[d.type], "description": d.description}
        if d.optional:
            prop["type"] = [prop["type"], "null"]
        if d.minimum is not None:
            prop["minimum"] = d.minimum
        if d.maximum is not None:
            prop["maximum"] = d.maximum
        if d.choices is not None:
            prop["enum"] = list(d.choices)
        properties[name] = prop
    return {"type": "object", "properties": properties, "additionalProperties": False}


ConfUpdateBody = Annotated[
    dict[str, Any],
    Body(
        media_type=RequestEncodingType.JSON,
        description="Config names and their new values.",
        schema_extra=conf_update_schema(),
    ),
]


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

    tags = ("configuration",)

    @route("/conf", http_method=[HttpMethod.OPTIONS], include_in_schema=False, status_code=204)
    async def allow_conf(self) -> Response[None]:
        """``OPTIONS /conf``: ``Allow: GET, OPTIONS, POST``."""
        # NOTE: Litestar builds the automatic OPTIONS answer from the first handler it registers
        # for a path (GET here), so it would omit POST. Handlers register in name order and
        # "allow_conf" sorts first, so this explicit one is used instead.
        return Response(None, status_code=204, headers={"allow": "GET, OPTIONS, POST"})

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
            415,
            s400=ResponseSpec(
                data_container=ConfUpdateError,
                description=(
                    'Some keys were not set (``updated`` + ``errors``: "Unknown config", '
                    '"Config is not mutable at runtime", or the expected type), '
                    "or the body is not a JSON object"
                ),
                generate_examples=False,
            ),
        ),
    )
    def post_conf(self, config: ConfigDep, data: ConfUpdateBody) -> ConfUpdateResult:
        """Updates several keys at once; 400 (with what was updated) when any key failed."""
        updated, errors = config.update(data)
        # Report the stored (coerced, secret-masked) values rather than the raw input.
        current = config.to_dict()
        shown = {k: current.get(k, v) for k, v in updated.items()}
        if errors:
            names = sorted(errors)
            listed = ", ".join(repr(n[:64]) for n in names[:_MAX_KEYS_LISTED])
            more = len(names) - _MAX_KEYS_LISTED
            raise ApiError(
                400,
                "Config update failed",
                f"{len(names)} of {len(data)} keys not updated: {listed}"
                + (f" and {more} more" if more > 0 else ""),
                updated=shown,
                errors=dict(errors),
            )
        return ConfUpdateResult(updated=shown)

    @get(
        "/meta", summary="Engine Metadata", sync_to_thread=True, responses=error_responses(400, 503)
    )
    def get_meta(self, engine: EngineDep, names: str | None = _NAMES) -> dict[str, Any]:
        """Engine metadata (worker_id, world_size, model_name, kv_shape, kv_dtype, ...)."""
        return _filter(engine.metadata_dict(), split_names(names))
