"""`lmcache-native serve` as a real process, driven over HTTP, stopped with SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from api_testlib import port_is_free
from lmcache_native.testing import reference

SCRIPT = Path(sys.executable).with_name("lmcache-native")
SHAPE = ["--num-layers", "2", "--num-kv-heads", "2", "--head-size", "16", "--num-blocks", "32"]


class Served:
    """A running `lmcache-native serve` process and the URL it printed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        assert SCRIPT.exists(), f"{SCRIPT} missing: reinstall the package (pip install -e .)"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", "0", *SHAPE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        found: list[str] = []
        done = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        done.wait(120)
        if not found:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"serve did not start: stdout={self.lines!r} stderr={err!r}")
        return found[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.mark.slow
def test_serve_end_to_end():
    served = Served()
    try:
        assert served.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=served.url, timeout=60) as c:
            assert c.get("/health").json() == {
                "status": "ok",
                "engine": True,
                "kv_cache_registered": True,
            }
            info = c.get("/cache/kvcache/info").json()
            assert info["num_layers"] == 2
            assert info["layers"]["layer_0"] == {
                "shape": [2, 32, 16, 2, 16],
                "dtype": "torch.bfloat16",
                "device": "cpu",
            }
            assert c.get("/conf?names=enable_chunk_statistics").json() == {
                "enable_chunk_statistics": True
            }
            assert c.post("/chunk_statistics/start").json()["message"] == "Started"

            check = c.get("/cache/kvcache/check?slot_mapping=[0,511]&chunk_size=256").json()
            assert check["num_chunks"] == 2
            store = c.post("/cache/store?tokens_mock=0,512").json()
            assert store["num_tokens"] == 512
            assert store["num_stored_tokens"] == 512
            retrieve = c.post("/cache/retrieve?tokens_mock=0,512").json()
            assert retrieve == {"status": "success", "num_tokens": 512, "num_retrieved": 512}
            assert c.get("/cache/kvcache/check?slot_mapping=[0,511]&chunk_size=256").json() == check

            assert c.put("/freeze/enable").json()["freeze"] is True
            frozen = c.post("/cache/store?tokens_mock=1000,1256").json()
            assert frozen["num_stored_tokens"] == 0
            assert c.put("/freeze/disable").json()["freeze"] is False

            bypass = c.put("/bypass/add?backend_name=LocalCPUBackend").json()
            assert bypass["bypassed_backends"] == ["LocalCPUBackend"]
            c.put("/bypass/remove?backend_name=LocalCPUBackend")

            assert c.get("/chunk_statistics/status").json()["total_chunks"] > 0
            cleared = c.delete("/cache/clear").json()
            assert cleared["num_removed"] == 2
            assert "# TYPE" in c.get("/metrics").text
            assert c.get("/lmc_version").text
    finally:
        code = served.stop(signal.SIGINT)
    assert code == 0, served.proc.stderr.read() if served.proc.stderr else ""
    assert port_is_free(served.port)


@pytest.mark.slow
def test_serve_sigterm_and_api_key():
    served = Served(env={"LMCACHE_INTERNAL_API_SERVER_API_KEY": "serve-key"})
    try:
        assert any("API key required" in line for line in served.lines)
        assert httpx.get(f"{served.url}/health", timeout=30).status_code == 401
        ok = httpx.get(
            f"{served.url}/health", headers={"Authorization": "Bearer serve-key"}, timeout=30
        )
        assert ok.status_code == 200
    finally:
        code = served.stop(signal.SIGTERM)
    assert code == 0
    assert port_is_free(served.port)


def test_serve_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunk_size: -5\n")
    proc = subprocess.run(
        [str(SCRIPT), "serve", "--port", "0", "--config", str(bad), *SHAPE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "chunk_size" in proc.stderr


def test_make_kv_caches_is_seeded():
    import torch
    from lmcache_native.cli import make_kv_caches

    a = make_kv_caches(1, "flash_attn", 2, 4, 1, 8, torch.bfloat16, seed=7)["layer_0"]
    b = make_kv_caches(1, "flash_attn", 2, 4, 1, 8, torch.bfloat16, seed=7)["layer_0"]
    c = make_kv_caches(1, "flash_attn", 2, 4, 1, 8, torch.bfloat16, seed=8)["layer_0"]
    assert a.shape == (2, 2, 4, 1, 8)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert not torch.equal(a.view(torch.int16), c.view(torch.int16))
    assert reference.kv_chunk_md5([a], [0, 1], 2, "flash_attn") == reference.kv_chunk_md5(
        [b], [0, 1], 2, "flash_attn"
    )
