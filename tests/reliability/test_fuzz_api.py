"""Schemathesis against the OpenAPI document of a real `lmcache-native serve` process.

Every operation of the document is fuzzed (schemathesis' positive and negative generation); each
answer must not be a 5xx, must match the response schema of its status code, must use a
documented status code and content type, and every error must be ``{"error", "message", ...}``.

CI runs ``LMC_FUZZ_EXAMPLES`` (default 5) examples per operation and generation mode
(positive: valid per the schema; negative: violating it), derandomized. The long run:

    LMC_FUZZ_EXAMPLES=100 LMC_FUZZ_RANDOM=1 .venv/bin/python -m pytest \
        tests/reliability/test_fuzz_api.py -q -s

prints the number of cases it sent. A second test drives the string parameters with a grammar
(valid, almost-valid and hostile ``tokens_mock`` / ``slot_mapping`` values), which the schema
alone cannot describe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmcache_native.api.openapi import openapi_document
from reliability_lib import SMALL_NUM_SLOTS, Served, assert_error_shape
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("LMC_FUZZ_EXAMPLES", "5"))
DERANDOMIZE = not os.environ.get("LMC_FUZZ_RANDOM")
_CASES = {"schema": 0, "grammar": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``serve`` with CPU, disk and ``fs://`` remote tiers and chunk statistics."""
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "lmcache.yaml"
    config.write_text(
        f"local_disk: {json.dumps(str(root / 'disk'))}\n"
        "max_local_disk_size: 0.05\n"
        f"remote_url: {json.dumps('fs://' + str(root / 'fs'))}\n"
    )
    s = Served("--config", str(config))
    try:
        yield s
    finally:
        code = s.stop()
        print(
            f"\nfuzz: {_CASES['schema']} schemathesis cases, {_CASES['grammar']} grammar cases "
            f"against {s.url} (exit {code})"
        )
        assert code == 0, s.logs()
        assert "Traceback" not in s.logs(), s.logs()


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    """The schema as the running server publishes it (schemathesis loads it over HTTP)."""
    return schemathesis.openapi.from_url(f"{served.url}/schema/openapi.json")


def _operations() -> list[tuple[str, str]]:
    # NOTE: collected from the app factory (no server needed at collection time);
    # test_served_document_is_the_app_document checks the server publishes the same one.
    doc = openapi_document()
    return [(m.upper(), p) for p, ops in sorted(doc["paths"].items()) for m in sorted(ops)]


def _any_string_path_param(param: dict[str, Any]) -> bool:
    """A path parameter that takes any string.

    No request can violate it (it cannot be left out, and every string is valid).
    """
    schema = param.get("schema", {})
    constraints = {"enum", "const", "pattern", "minLength", "maxLength", "format"}
    return (
        param.get("in") == "path"
        and schema.get("type") == "string"
        and not constraints & set(schema)
    )


def _can_be_invalid(method: str, path: str) -> bool:
    """Whether a request can violate the operation's schema.

    It has parameters or a body with declared fields); schemathesis cannot generate negative cases
    for the others.
    """
    op = openapi_document()["paths"][path][method.lower()]
    params = op.get("parameters") or []
    if any(not _any_string_path_param(p) for p in params):
        return True
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema_ref = body.get("schema", {})
    return "$ref" in schema_ref or bool(schema_ref.get("properties"))


OPERATIONS = _operations()
FUZZ_PARAMS = [
    pytest.param(m, p, mode, id=f"{m}-{p}-{mode.value}")
    for m, p in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_invalid(m, p)
]


@schemathesis.check
def error_body_shape(ctx: Any, response: Any, case: Any) -> bool | None:  # noqa: ARG001
    # (schemathesis passes a check's arguments by position: ctx, response, case)
    """Every 4xx/5xx answer is a JSON object with string ``error`` and ``message``."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.startswith("application/json"), f"error with content-type {ctype!r}"
    body = json.loads(response.text)
    assert isinstance(body, dict), f"error body is not an object: {response.text[:200]}"
    assert isinstance(body.get("error"), str), f"no 'error': {body}"
    assert body["error"], f"no 'error': {body}"
    assert isinstance(body.get("message"), str), f"no 'message': {body}"
    assert body["message"], f"no 'message': {body}"
    assert "Traceback" not in response.text
    return True


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    error_body_shape,
]


def test_served_document_is_the_app_document(served: Served) -> None:
    served_doc = httpx.get(f"{served.url}/schema/openapi.json", timeout=60).json()
    assert served_doc == json.loads(json.dumps(openapi_document()))
    assert len(OPERATIONS) >= 30


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_openapi_coverage(api_schema: Any, method: str, path: str) -> None:
    """Schemathesis' coverage phase.

    Boundary values, missing and wrong-typed fields, missing body, wrong content types and
    unsupported methods, for both generation modes.
    """
    operation = api_schema[path][method]
    cases = list(
        api_schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=api_schema.config.generation_for(operation=operation),
        )
    )
    assert cases
    for case in cases:
        _CASES["schema"] += 1
        case.call_and_validate(checks=CHECKS, timeout=60)


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_PARAMS)
def test_openapi_fuzz(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _CASES["schema"] += 1
        case.call_and_validate(checks=CHECKS, timeout=60)

    run()


# -- grammar-driven string parameters ------------------------------------------------------------

_small = st.integers(min_value=-3, max_value=SMALL_NUM_SLOTS + 3)
_big = st.integers(min_value=-(10**20), max_value=10**20)
_int_text = st.one_of(_small, _big).map(str) | st.sampled_from(
    ["", " ", "+1", "-0", "0x10", "1e3", "1.5", "NaN", "٣", "\uff11", "9" * 400]
)
_range = st.tuples(_int_text, _int_text).map(lambda t: f"[{t[0]},{t[1]}]")
_item = st.one_of(_int_text, _range, st.sampled_from(["[", "]", "[]", "[[1,2]]", ",", "[1]"]))
_slot_mapping = st.lists(_item, max_size=12).map(",".join) | st.text(max_size=40)
_tokens = st.one_of(
    st.tuples(_int_text, _int_text).map(lambda t: f"{t[0]},{t[1]}"),
    st.lists(_int_text, max_size=5).map(",".join),
    st.text(max_size=30),
)
_endpoint = st.sampled_from(["store", "retrieve", "check"])


@settings(
    max_examples=MAX_EXAMPLES * 10,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(
    endpoint=_endpoint,
    tokens=_tokens,
    slot_mapping=_slot_mapping,
    chunk_size=st.one_of(_int_text, st.none()),
    layerwise=st.sampled_from([None, "true", "false", "1", "yes", "maybe"]),
)
def test_string_parameter_grammar(
    served: Served,
    endpoint: str,
    tokens: str,
    slot_mapping: str,
    chunk_size: str | None,
    layerwise: str | None,
) -> None:
    _CASES["grammar"] += 1
    if endpoint == "check":
        params = {"slot_mapping": slot_mapping}
        if chunk_size is not None:
            params["chunk_size"] = chunk_size
        if layerwise is not None:
            params["layerwise"] = layerwise
        r = httpx.get(f"{served.url}/cache/kvcache/check", params=params, timeout=60)
    else:
        r = httpx.post(f"{served.url}/cache/{endpoint}", params={"tokens_mock": tokens}, timeout=60)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    if r.status_code == 400:
        assert_error_shape(r)
        return
    body = r.json()
    assert body["status"] == "success"
    if endpoint == "check":
        assert body["num_chunks"] >= 1
        assert all(isinstance(c, (str, list)) for c in body["chunk_checksums"]) or isinstance(
            body["chunk_checksums"], dict
        )
    else:
        start, end = (int(x) for x in tokens.split(","))
        assert body["num_tokens"] == end - start <= SMALL_NUM_SLOTS
