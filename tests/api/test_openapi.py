"""The OpenAPI document: snapshot, coverage of the spec, error responses documented.

After an intended API change, regenerate the snapshot with
    .venv/bin/python -m lmcache_native.api.openapi tests/api/openapi_snapshot.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_testlib import SPEC_ENDPOINTS
from lmcache_native.api.openapi import openapi_document, render

SNAPSHOT = Path(__file__).with_name("openapi_snapshot.json")

# Every endpoint of inference_apis.rst, plus /metrics and /health, plus LMCache's common ones.
ENDPOINTS = [
    *SPEC_ENDPOINTS,
    # LMCache's common admin endpoints
    ("get", "/backends"),
    ("get", "/loglevel"),
    ("post", "/loglevel"),
    ("get", "/threads"),
    ("get", "/periodic-threads"),
    ("get", "/periodic-threads/{thread_name}"),
    ("get", "/periodic-threads-health"),
    ("get", "/env"),
    ("post", "/metrics/reset"),
]


REGENERATE = (
    "The OpenAPI document changed. If intended, regenerate it with: "
    ".venv/bin/python -m lmcache_native.api.openapi tests/api/openapi_snapshot.json"
)


def _without_config_table(doc: dict) -> dict:
    """The document minus the POST /conf body properties, which mirror the config table.

    Those follow ``CONFIG_DEFINITIONS`` (owned by the config module) and are checked against it
    in test_configuration.py, so a new config key does not break this snapshot.
    """
    doc = json.loads(json.dumps(doc))
    body = doc["paths"]["/conf"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"] = "<CONFIG_DEFINITIONS: mutable keys>"
    return doc


def _snapshot() -> dict:
    return _without_config_table(json.loads(SNAPSHOT.read_text(encoding="utf-8")))


def test_snapshot_matches():
    assert _without_config_table(json.loads(render())) == _snapshot(), REGENERATE


def test_render_is_stable():
    assert render() == render()


def test_served_document_equals_snapshot(client):
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    assert _without_config_table(r.json()) == _snapshot(), REGENERATE


@pytest.fixture(scope="module")
def doc():
    return openapi_document()


def test_exactly_the_spec_endpoints(doc):
    found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert found == set(ENDPOINTS)
    assert len(ENDPOINTS) == 39


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_errors_documented_with_error_shape(doc, method, path):
    op = doc["paths"][path][method]
    for code in ("401", "500"):
        schema = op["responses"][code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    if op.get("parameters") or "requestBody" in op:
        assert "400" in op["responses"]
    assert "200" in op["responses"]


def test_error_body_schema(doc):
    schema = doc["components"]["schemas"]["ErrorBody"]
    assert schema["required"] == ["error", "message"]
    assert schema["properties"] == {"error": {"type": "string"}, "message": {"type": "string"}}
