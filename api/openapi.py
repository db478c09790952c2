"""Print or write the admin API's OpenAPI document (no engine, no server needed).

Regenerate the test snapshot after an intended API change::

    .venv/bin/python -m lmcache_native.api.openapi tests/api/openapi_snapshot.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``create_app`` (identical for every engine and config)."""
    from lmcache_native.api.app import create_app
    from lmcache_native.config import LMCacheEngineConfig

    app = create_app(None, LMCacheEngineConfig.from_defaults())
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def render() -> str:
    """The document as stable, indented JSON (sorted keys, trailing newline)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lmcache_native.api.openapi [OUT.json]``: write to OUT or print."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
