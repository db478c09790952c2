"""Engine switches: Freeze Mode (``/freeze/*``) and Hot Cache (``/hot_cache/*``).

Each switch answers ``PUT <path>/enable``, ``PUT <path>/disable`` and ``GET <path>/status``
with the same body shape (``status``, the switch's field, ``message``); ``switch_controller``
builds the controller of one switch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Controller, get, put
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.schemas import FreezeStatus, HotCacheStatus
from lmcache_native.engine import CacheEngine

from ..routes import route


def switch_controller(
    name: str,
    *,
    path: str,
    title: str,
    short: str,
    body: type[msgspec.Struct],
    set_state: Callable[[CacheEngine, bool], object],
    get_state: Callable[[CacheEngine], object],
) -> type[Controller]:
    """A controller for one on/off engine switch.

    Args:
        name: the class name (``FreezeController``); the OpenAPI tag is ``path`` without its
            slash, underscores as dashes.
        path: the URL prefix (``/freeze``).
        title: the switch in title case (``Freeze Mode``): summaries, messages, error titles.
        short: the status summary's and status error title's name (``Freeze``).
        body: the answer's struct: ``status``, the switch's field, ``message``.
        set_state: turns the switch on or off.
        get_state: whether the switch is on.

    Returns:
        A Litestar controller class with ``enable``, ``disable`` and ``status`` handlers.
    """
    lower = title.lower()
    label = title.capitalize()
    field = next(f for f in body.__struct_fields__ if f not in ("status", "message"))

    def answer(on: bool, message: str) -> Any:
        return body(status="success", message=message, **{field: on})

    def switch(engine: CacheEngine, on: bool) -> Any:
        set_state(engine, on)
        return answer(on, f"{label} {'enabled' if on else 'disabled'} successfully")

    def enable(_self: Controller, engine: EngineDep) -> Any:
        return switch(engine, True)

    def disable(_self: Controller, engine: EngineDep) -> Any:
        return switch(engine, False)

    def status(_self: Controller, engine: EngineDep) -> Any:
        on = bool(get_state(engine))
        return answer(on, f"{label} is {'enabled' if on else 'disabled'}")

    enable.__doc__ = f"Enables {lower}."
    disable.__doc__ = f"Disables {lower}."
    status.__doc__ = f"Whether {lower} is on."
    namespace: dict[str, Any] = {
        "__doc__": f"{title}: ``PUT {path}/enable``, ``PUT {path}/disable``, ``GET .../status``.",
        "__module__": __name__,
        "path": path,
        "tags": [path.strip("/").replace("_", "-")],
    }
    handlers = (
        (put, enable, f"Enable {title}", f"Failed to enable {lower}"),
        (put, disable, f"Disable {title}", f"Failed to disable {lower}"),
        (get, status, f"{short} Status", f"Failed to get {short.lower()} status"),
    )
    for method, fn, summary, error_title in handlers:
        fn.__annotations__ = {"engine": EngineDep, "return": body}
        namespace[fn.__name__] = route(
            method, f"/{fn.__name__}", summary, 503, error_title=error_title
        )(fn)
    return type(name, (Controller,), namespace)


FreezeController = switch_controller(
    "FreezeController",
    path="/freeze",
    title="Freeze Mode",
    short="Freeze",
    body=FreezeStatus,
    set_state=lambda engine, on: engine.freeze(on),
    get_state=lambda engine: engine.is_frozen,
)
"""While frozen, stores are skipped and lookups/retrieves use the CPU tier only."""

HotCacheController = switch_controller(
    "HotCacheController",
    path="/hot_cache",
    title="Hot Cache",
    short="Hot Cache",
    body=HotCacheStatus,
    set_state=lambda engine, on: engine.set_hot_cache(on),
    get_state=lambda engine: engine.hot_cache_enabled,
)
"""The LocalCPUBackend hot cache; disabling it clears the CPU tier and keeps nothing new."""
