"""Hostile input, one test per class, against a real `lmcache-native serve` process.

Every answer must be a 4xx with the ``{"error", "message"}`` body (never a 5xx, a hang, a
traceback or a crash), and the server's peak resident memory (VmHWM, reset before each probe
with /proc/<pid>/clear_refs) may grow only by a bounded amount, however large the request
claims to be. Request timeouts are hang guards, not speed assertions.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from reliability_lib import (
    SMALL_NUM_SLOTS,
    Served,
    assert_error_shape,
    hwm_bytes,
    reset_hwm,
    rss_bytes,
)

MB = 1 << 20
# Generous: the largest accepted request (8 MiB of query string) is held by h11, by the ASGI
# scope and by the parsed query at once; anything proportional to a claimed count (10**15
# slots, 10**18 tokens) would be gigabytes.
PEAK_GROWTH_BOUND = 256 * MB
SECRET = "s3cr3t-value-that-must-never-be-echoed"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        code = s.stop()
        assert code == 0, s.logs()
        assert "Traceback" not in s.logs(), s.logs()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with served.client(timeout=60) as c:
        yield c


def _peak_growth(served: Served, call: Callable[[], Any]) -> tuple[Any, int, float]:
    """Runs ``call`` and returns its result, the server's peak RSS growth and the seconds."""
    pid = served.proc.pid
    assert reset_hwm(pid), "cannot reset VmHWM (needs /proc/<pid>/clear_refs)"
    before = rss_bytes(pid)
    t0 = time.perf_counter()
    out = call()
    elapsed = time.perf_counter() - t0
    return out, hwm_bytes(pid) - before, elapsed


class RawResponse:
    """What :func:`_http` got back (enough of httpx.Response for ``assert_error_shape``)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _http(served: Served, method: str, target: str) -> RawResponse:
    """One request with http.client, which (unlike httpx) sends query strings of any length."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
    try:
        conn.request(method, target, headers={"Content-Length": "0"})
        resp = conn.getresponse()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _alive(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


# -- tokens_mock / tokens_input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens_mock",
    [
        "0,1000000000000000000",  # 10**18 tokens: far more than the cache's slots
        "0,99999999999999999999999999999",  # beyond int64
        "-5,10",
        "-1000000000000000000,0",
        "10,5",
        "7,7",
        "1e3,2e3",
        "0,100,200",
        ",",
        "0x10,0x20",
        "٣,٤",  # non-ASCII digits
        "0," + "9" * 5000,
    ],
)
def test_tokens_mock_huge_or_negative(served, client, tokens_mock):
    for endpoint in ("/cache/store", "/cache/retrieve"):
        r, growth, _secs = _peak_growth(
            served, lambda e=endpoint: client.post(e, params={"tokens_mock": tokens_mock})
        )
        body = assert_error_shape(r, 400)
        assert body["error"].startswith(("Invalid tokens_mock", "Invalid parameters")), body
        assert growth < PEAK_GROWTH_BOUND, (tokens_mock, growth)
    _alive(client)


def test_tokens_input_of_a_million_items(served):
    text = ",".join(["1"] * 1_000_000)  # ~2 MB of query
    r, growth, secs = _peak_growth(
        served, lambda: _http(served, "POST", "/cache/store?tokens_input=" + text)
    )
    body = assert_error_shape(r, 400)
    assert str(SMALL_NUM_SLOTS) in body["message"], body
    assert growth < PEAK_GROWTH_BOUND, growth
    print(f"\ntokens_input 10^6 items: 400 in {secs:.3f}s, server peak RSS +{growth / MB:.1f} MiB")


# -- slot_mapping ---------------------------------------------------------------------------------


def test_slot_mapping_of_a_million_items(served, client):
    text = ",".join(str(i % SMALL_NUM_SLOTS) for i in range(1_000_000))  # ~3.4 MB
    r, growth, secs = _peak_growth(
        served,
        lambda: _http(served, "GET", f"/cache/kvcache/check?chunk_size=16&slot_mapping={text}"),
    )
    body = assert_error_shape(r, 400)
    assert body["error"] in ("Invalid slot_mapping format", "Invalid slot indices"), body
    assert growth < PEAK_GROWTH_BOUND, growth
    print(f"\nslot_mapping 10^6 items: 400 in {secs:.3f}s, server peak RSS +{growth / MB:.1f} MiB")
    _alive(client)


@pytest.mark.parametrize(
    "slot_mapping",
    [
        "[0,1000000000000000]",  # 10**15 slots in one range
        "[0,9223372036854775807]",
        "[0,99999999999999999999999]",
        "0,[0,1000000000000000],1",
        ",".join(["[0,511]"] * 1000),  # each range fits, the total does not
    ],
)
def test_slot_mapping_huge_ranges(served, client, slot_mapping):
    r, growth, _secs = _peak_growth(
        served,
        lambda: client.get(
            "/cache/kvcache/check", params={"slot_mapping": slot_mapping, "chunk_size": 4}
        ),
    )
    body = assert_error_shape(r, 400)
    assert body["error"] in ("Invalid slot_mapping format", "Invalid slot indices"), body
    assert growth < PEAK_GROWTH_BOUND, growth


def test_slot_mapping_over_the_query_limit(served, client):
    from lmcache_native.api.security import MAX_QUERY_BYTES

    # Just over the app's limit: the app answers 414 before parsing anything.
    text = "1," * ((MAX_QUERY_BYTES + 4096) // 2)
    r, growth, _ = _peak_growth(
        served,
        lambda: _http(served, "GET", f"/cache/kvcache/check?chunk_size=1&slot_mapping={text}"),
    )
    assert_error_shape(r, 414)
    assert growth < PEAK_GROWTH_BOUND, growth
    # Far over it (beyond the HTTP layer's bound on a request head): the connection is refused
    # with a plain 400 or closed while sending; either way nothing is buffered without bound.
    huge = "1," * (16 * MB)

    def send_huge() -> int | None:
        try:
            return _http(served, "GET", f"/cache/kvcache/check?slot_mapping={huge}").status_code
        except (ConnectionError, http.client.HTTPException):
            return None

    status, growth, _ = _peak_growth(served, send_huge)
    assert status in (None, 400, 414), status
    assert growth < PEAK_GROWTH_BOUND, growth
    _alive(client)


@pytest.mark.parametrize("depth", [2, 64, 100_000])
def test_deep_brackets(served, client, depth):
    for text in ("[" * depth + "1,2" + "]" * depth, "[" * depth, "]" * depth):
        r = _http(served, "GET", f"/cache/kvcache/check?chunk_size=1&slot_mapping={text}")
        body = assert_error_shape(r, 400)
        assert body["error"] == "Invalid slot_mapping format", body
    nested = ("[" * depth + "]" * depth).encode()
    for path in ("/conf", "/cache/load-fs-chunks"):
        r = client.post(path, content=nested, headers={"content-type": "application/json"})
        assert_error_shape(r, 400)
    deep_obj = ('{"a":' * min(depth, 200_000) + "1" + "}" * min(depth, 200_000)).encode()
    r = client.post("/conf", content=deep_obj, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413), r.text[:300]
    assert_error_shape(r)
    _alive(client)


# -- bytes that are not UTF-8 ----------------------------------------------------------------------


def _raw_request(served: Served, request: bytes) -> tuple[int, bytes]:
    """Sends ``request`` on a raw socket; returns the status code and the body."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


@pytest.mark.parametrize(
    "target",
    [
        b"/cache/kvcache/check?slot_mapping=%FF%FE&chunk_size=1",
        b"/cache/kvcache/check?slot_mapping=\xff\xfe&chunk_size=1",
        b"/cache/store?tokens_mock=%C0%AF,%80",
        b"/conf?names=%ff%00%fe",
        b"/meta?names=\xc3\x28",
        b"/bypass/add?backend_name=%FF",
        b"/cache/clear?locations=%FF",
        b"/cache/kvcache/record_slot?enabled=%FF",
    ],
)
def test_non_utf8_query(served, target):
    method = (
        b"POST"
        if b"store" in target or b"record_slot" in target
        else (b"PUT" if b"bypass" in target else b"GET")
    )
    if b"clear" in target:
        method = b"DELETE"
    status, body = _raw_request(
        served,
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    assert 400 <= status < 500 or status == 200, (status, body[:300])
    assert b"Traceback" not in body
    if body == b"Invalid HTTP request received.":
        # NOTE: raw bytes >= 0x80 in the request target are not HTTP/1.1 (RFC 9112); the
        # HTTP layer (h11) refuses them with a plain 400 before the app sees the request.
        assert status == 400
        assert b"%" not in target
        return
    if status >= 400:
        parsed = json.loads(body)
        assert isinstance(parsed["error"], str)
        assert isinstance(parsed["message"], str)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"config_path": "\xff\xfe"}',
        b'{"\xff": 1}',
        b"\xff\xfe\x00\x00",
        b'{"config_path": "\xed\xa0\x80"}',  # an encoded UTF-16 surrogate
        b'{"config_path": "/tmp/\\ud800"}',  # a lone surrogate escape
    ],
)
def test_non_utf8_json_body(client, payload):
    for path in ("/conf", "/cache/load-fs-chunks"):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
        assert_error_shape(r, 400)


def test_non_utf8_authorization_header(served):
    status, body = _raw_request(
        served,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n",
    )
    # No key is configured here, so the header is ignored; it must not break the server.
    assert status == 200, body


# -- request bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/conf", "/cache/load-fs-chunks"])
def test_oversized_json_body(served, client, path):
    big = json.dumps({"config_path": "x" * (2 * MB)}).encode()
    r, growth, _ = _peak_growth(
        served,
        lambda: client.post(path, content=big, headers={"content-type": "application/json"}),
    )
    assert_error_shape(r, 413)
    assert growth < PEAK_GROWTH_BOUND, growth

    def stream() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield b'{"config_path": "'
        for _ in range(64):
            yield b"y" * (64 << 10)
        yield b'"}'

    r = client.post(path, content=stream(), headers={"content-type": "application/json"})
    assert_error_shape(r, 413)
    _alive(client)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "",
    ],
)
def test_wrong_content_types(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    for path, body in (
        ("/conf", b'{"min_retrieve_tokens": 1}'),
        ("/cache/load-fs-chunks", b'{"config_path": "/nonexistent.yaml"}'),
        ("/conf", b"min_retrieve_tokens=1"),
        ("/conf", b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--xyz--\r\n"),
    ):
        r = client.post(path, content=body, headers=headers)
        assert r.status_code < 500, (content_type, path, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert_error_shape(r)


# -- /conf with unknown keys and wrong types -------------------------------------------------------

JSON_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    10**30,
    1.5,
    -1e308,
    "",
    "text",
    "\u0000",
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": None}},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=lambda v: json.dumps(v)[:20])
def test_unknown_config_keys_with_every_type(client, value):
    before = client.get("/conf").json()
    r = client.post("/conf", json={"no_such_key": value, "": value, "a.b": value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["updated"] == {}
    assert body["errors"] == {k: "Unknown config" for k in ("no_such_key", "", "a.b")}
    assert client.get("/conf").json() == before


@pytest.mark.parametrize("value", JSON_VALUES, ids=lambda v: json.dumps(v)[:20])
def test_known_config_keys_with_every_type(client, value):
    """Every mutable key, set to every JSON type.

    The right type within bounds is applied, anything else is refused per key and leaves the value
    unchanged; never a 5xx.
    """
    before = client.get("/conf").json()
    mutable = [
        "max_local_cpu_size",
        "max_local_disk_size",
        "save_unfull_chunk",
        "save_decode_cache",
        "min_retrieve_tokens",
        "blocking_timeout_secs",
        "chunk_statistics_auto_exit_timeout_hours",
        "chunk_statistics_auto_exit_target_unique_chunks",
    ]
    for key in mutable:
        r = client.post("/conf", json={key: value})
        assert r.status_code in (200, 400), r.text
        body = r.json()
        if r.status_code == 400:
            assert key in body["errors"], body
            assert client.get("/conf", params={"names": key}).json()[key] == before[key]
        # restore what may have changed
        client.post("/conf", json={key: before[key]})
    assert client.get("/conf").json() == before
    _alive(client)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_local_cpu_size", 1e307),
        ("max_local_disk_size", 1e300),
        ("blocking_timeout_secs", 10**12),
        ("chunk_statistics_auto_exit_timeout_hours", 1e400),  # JSON decodes it to +inf
    ],
)
def test_config_values_beyond_representable_bounds(client, key, value):
    before = client.get("/conf", params={"names": key}).json()[key]
    number = "1e400" if value == 1e400 else repr(value)
    payload = ('{"' + key + '": ' + number + "}").encode()
    r = client.post("/conf", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    body = r.json()
    if "errors" in body:  # refused by the config table
        assert key in body["errors"], body
    else:  # refused by the JSON decoder (1e400 does not fit a double)
        assert_error_shape(r, 400)
    assert "Traceback" not in r.text
    assert client.get("/conf", params={"names": key}).json()[key] == before


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("LMCACHE_MAX_LOCAL_CPU_SIZE", "nan"),
        ("LMCACHE_MAX_LOCAL_CPU_SIZE", "inf"),
        ("LMCACHE_MAX_LOCAL_DISK_SIZE", "-inf"),
        ("LMCACHE_MAX_LOCAL_CPU_SIZE", "1e307"),
        ("LMCACHE_BLOCKING_TIMEOUT_SECS", str(10**12)),
        ("LMCACHE_CHUNK_STATISTICS_AUTO_EXIT_TIMEOUT_HOURS", "nan"),
        ("LMCACHE_EXTRA_CONFIG", '{"a":' * 5000 + "1" + "}" * 5000),
        ("LMCACHE_EXTRA_CONFIG", "[" * 5000),
    ],
)
def test_config_environment_values_that_would_crash_the_engine(var, raw, monkeypatch):
    """Values that pass a naive type check but overflow later (int(inf * GB).

    A socket timeout beyond time_t, JSON nesting beyond the recursion limit) are a ConfigError at
    load.
    """
    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.errors import ConfigError

    monkeypatch.setenv(var, raw)
    with pytest.raises(ConfigError, match=var.removeprefix("LMCACHE_").lower()):
        LMCacheEngineConfig.load()


@pytest.mark.parametrize(
    "content", ["{" * 10000, "[" * 10000 + "]" * 10000, "a: " + "[" * 10000 + "]" * 10000]
)
def test_config_file_nested_too_deeply(tmp_path, content):
    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.errors import ConfigError

    path = tmp_path / "deep.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="YAML"):
        LMCacheEngineConfig.from_file(path)


# -- load-fs-chunks config_path --------------------------------------------------------------------


def _load_fs(client: httpx.Client, path: str) -> dict[str, Any]:
    r = client.post("/cache/load-fs-chunks", json={"config_path": path})
    body = assert_error_shape(r, 400)
    assert body["config_path"] == path
    assert SECRET not in r.text
    return body


def test_load_fs_chunks_directory(client, tmp_path):
    assert "directory" in _load_fs(client, str(tmp_path))["message"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null", "/dev/stdin"])
def test_load_fs_chunks_device_file(served, client, device):
    if not os.path.exists(device):
        pytest.fail(f"{device} is missing on this machine")
    body, growth, _ = _peak_growth(served, lambda: _load_fs(client, device))
    assert "regular file" in body["message"] or "not found" in body["message"], body
    assert growth < 64 * MB, growth


def test_load_fs_chunks_fifo(client, tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert "regular file" in _load_fs(client, str(fifo))["message"]


def test_load_fs_chunks_one_gigabyte_sparse_file(served, client, tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse: no blocks written
    body, growth, _ = _peak_growth(served, lambda: _load_fs(client, str(big)))
    assert "too large" in body["message"], body
    assert growth < 64 * MB, growth


def test_load_fs_chunks_symlink_loop(client, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    assert "symlink loop" in _load_fs(client, str(a))["message"]
    self_loop = tmp_path / "self.yaml"
    self_loop.symlink_to(self_loop)
    _load_fs(client, str(self_loop))


def test_load_fs_chunks_dangling_symlink_and_odd_paths(client, tmp_path):
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    assert "not found" in _load_fs(client, str(dangling))["message"]
    for path in ("relative/path.yaml", "/" + "a" * 5000, str(tmp_path) + "/\x01\x7f.yaml"):
        _load_fs(client, path)
    r = client.post("/cache/load-fs-chunks", json={"config_path": "/tmp/x\u0000.yaml"})
    assert_error_shape(r, 400)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\xff" * 100 + SECRET.encode(),  # binary
        ("remote_url: [unclosed\n" + SECRET).encode(),  # broken YAML
        ("- a list\n- not a mapping\n- " + SECRET).encode(),
        ("just a string " + SECRET).encode(),
        ("!!python/object/apply:os.system ['echo " + SECRET + "']").encode(),
        (f"remote_url: {SECRET}\n").encode(),  # a mapping, but not an fs:// URL
        (f"chunk_size: {SECRET}\n").encode(),  # a known key with a bad value
        ("a: &x [*x]\n" + SECRET).encode(),
        b"{" * 10000,
    ],
)
def test_load_fs_chunks_not_a_yaml_config(client, tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    _load_fs(client, str(path))


def test_load_fs_chunks_yaml_bomb(served, client, tmp_path):
    """Billion laughs.

    Aliases that would expand exponentially stay references in PyYAML, and the file is refused (not
    an fs:// config) without blowing up memory.
    """
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    body, growth, _ = _peak_growth(served, lambda: _load_fs(client, str(path)))
    assert growth < 64 * MB, growth
    assert "fs://" in body["message"] or "Invalid" in body["message"], body


def test_load_fs_chunks_fs_directory_problems(client, tmp_path):
    """The YAML is fine but its fs:// store is not a usable directory."""
    target = tmp_path / "store-file"
    target.write_bytes(b"not a directory")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for url in (f"fs://{target}", f"fs://{tmp_path}/missing", f"fs://{loop}", "fs://"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"remote_url: {json.dumps(url)}\n")
        _load_fs(client, str(cfg))


def test_server_survived_everything(served, client):
    _alive(client)
    assert served.proc.poll() is None
    assert "Traceback" not in served.logs(), served.logs()


def test_huge_chunk_size_and_layerwise_values(client):
    for chunk_size in ("0", "-1", "1.5", "abc", "", "9" * 5000):
        r = client.get(
            "/cache/kvcache/check", params={"slot_mapping": "0,1", "chunk_size": chunk_size}
        )
        assert_error_shape(r, 400)
    for chunk_size in (str(1 << 62), "99999999999999999999999"):  # one chunk of all slots
        r = client.get(
            "/cache/kvcache/check", params={"slot_mapping": "0,1", "chunk_size": chunk_size}
        )
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json()["num_chunks"] == 1
        else:
            assert_error_shape(r)
    for layerwise in ("maybe", "2", ""):
        r = client.get(
            "/cache/kvcache/check",
            params={"slot_mapping": "0,1", "chunk_size": "1", "layerwise": layerwise},
        )
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert_error_shape(r)
