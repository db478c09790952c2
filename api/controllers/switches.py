"""Engine switches: Freeze Mode (``/freeze/*``) and Hot Cache (``/hot_cache/*``).

Each switch answers ``PUT <path>/enable``, ``PUT <path>/disable`` and ``GET <path>/status``
with the same body shape (``status``, the switch's field, ``message``); ``switch_controller``
builds the controller of one switch.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, put
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.schemas import FreezeStatus, HotCacheStatus
from lmcache_native.engine import CacheEngine

from ..routes import route


def switch_controller(
    path: str, title: str, short: str, body: type[msgspec.Struct], switch: tuple[str, str]
) -> type[Controller]:
    """A controller for one on/off engine switch.

    Args:
        path: the URL prefix (``/freeze``); the OpenAPI tag is ``path`` without its slash,
            underscores as dashes.
        title: the switch in title case (``Freeze Mode``): summaries, messages, error titles;
            the class is named after ``short`` or, when empty, ``title`` (``HotCacheController``).
        short: the status summary's and status error title's name (``Freeze``; empty: ``title``).
        body: the answer's struct: ``status``, the switch's field, ``message``.
        switch: the engine's setter method (``freeze``) and state property (``is_frozen``).

    Returns:
        A Litestar controller class with ``enable``, ``disable`` and ``status`` handlers.
    """
    short = short or title
    name = short.replace(" ", "") + "Controller"
    setter, getter = switch
    lower = title.lower()
    label = title.capitalize()
    field = next(f for f in body.__struct_fields__ if f not in ("status", "message"))

    def answer(on: bool, message: str) -> Any:
        return body(status="success", message=message, **{field: on})

    def turn(engine: CacheEngine, on: bool) -> Any:
        getattr(engine, setter)(on)
        return answer(on, f"{label} {'enabled' if on else 'disabled'} successfully")

    def enable(_self: Controller, engine: EngineDep) -> Any:
        return turn(engine, True)

    def disable(_self: Controller, engine: EngineDep) -> Any:
        return turn(engine, False)

    def status(_self: Controller, engine: EngineDep) -> Any:
        on = bool(getattr(engine, getter))
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
    "/freeze", "Freeze Mode", "Freeze", FreezeStatus, ("freeze", "is_frozen")
)
"""While frozen, stores are skipped and lookups/retrieves use the CPU tier only."""

HotCacheController = switch_controller(
    "/hot_cache", "Hot Cache", "", HotCacheStatus, ("set_hot_cache", "hot_cache_enabled")
)
"""The LocalCPUBackend hot cache; disabling it clears the CPU tier and keeps nothing new."""
