"""Helpers of the reliability tests.

A real `lmcache-native serve` process, memory and fd probes, the error-shape check, and a small
paged KV cache read with plain torch indexing.

KV rows are read and written here with plain torch indexing on a flat view of the flash-attn
cache (``[2, num_slots, num_heads * head_size]`` per layer), never with the engine's kernels,
so a check does not share code with what it checks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch

SCRIPT = Path(sys.executable).with_name("lmcache-native")
# Small shape so the process starts in a few seconds: 2 layers x 512 slots, bf16.
SMALL_SHAPE = [
    "--num-layers",
    "2",
    "--num-kv-heads",
    "2",
    "--head-size",
    "16",
    "--num-blocks",
    "32",
]
SMALL_NUM_SLOTS = 32 * 16


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without any ``LMCACHE_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra or {})
    return env


class Served:
    """A running ``lmcache-native serve`` subprocess, its URL and everything it printed.

    Args:
        *args: extra command-line arguments (after the small shape).
        env: extra environment variables (``LMCACHE_*`` from the caller's env are dropped).
        port: the port (0: a free one, read back from the printed URL).
        shape: the shape arguments (default :data:`SMALL_SHAPE`).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        port: int = 0,
        shape: list[str] | None = None,
    ) -> None:
        assert SCRIPT.exists(), f"{SCRIPT} missing: reinstall the package (pip install -e .)"
        self.argv = [
            str(SCRIPT),
            "serve",
            "--port",
            str(port),
            *(SMALL_SHAPE if shape is None else shape),
            *args,
        ]
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.url = self._wait_for_url()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def _wait_for_url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stdout):
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"serve did not start: stdout={''.join(self.stdout)!r} stderr={''.join(self.stderr)!r}"
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server (60 s timeout unless given)."""
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, **kwargs)

    def logs(self) -> str:
        """Everything printed so far, stdout then stderr."""
        return "".join(self.stdout) + "".join(self.stderr)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Sends ``sig`` and waits; kills it if it does not exit. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for t in self._readers:
            t.join(timeout=5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for t in self._readers:
            t.join(timeout=5)


def assert_error_shape(response: Any, status: int | None = None) -> dict[str, Any]:
    """Asserts an error answer: JSON ``{"error": str, "message": str, ...}``, no traceback."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.status_code >= 400, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    assert "Traceback" not in response.text
    return body


def _status_bytes(field: str, pid: int | None) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (this process by default), in bytes."""
    with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/status")


def rss_bytes(pid: int | None = None) -> int:
    """Current resident set size of ``pid`` (this process by default), from /proc."""
    return _status_bytes("VmRSS", pid)


def hwm_bytes(pid: int | None = None) -> int:
    """Peak resident set size (VmHWM) of ``pid`` (this process by default)."""
    return _status_bytes("VmHWM", pid)


def reset_hwm(pid: int | None = None) -> bool:
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5); ``False`` where not allowed."""
    try:
        with open(f"/proc/{pid or 'self'}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def open_fds(pid: int | None = None) -> int:
    """Open file descriptors of ``pid`` (this process by default)."""
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


# -- a small paged KV cache ------------------------------------------------------------------

NUM_LAYERS = 2
NUM_BLOCKS = 32
BLOCK_SIZE = 16
NUM_HEADS = 2
HEAD_SIZE = 16
CHUNK = 16
NUM_SLOTS = NUM_BLOCKS * BLOCK_SIZE
ROW = NUM_HEADS * HEAD_SIZE
LAYOUT = "flash_attn"
MODEL = "reliability/model"
SENTINEL = 0xA5


def random_cache(seed: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Per-layer flash-attn caches of seeded random bytes (every bit pattern can occur)."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    elem = torch.empty((), dtype=dtype).element_size()
    n = 2 * NUM_BLOCKS * BLOCK_SIZE * NUM_HEADS * HEAD_SIZE
    return {
        f"layer_{i}": torch.randint(0, 256, (n * elem,), dtype=torch.uint8, generator=g)
        .view(dtype)
        .view(shape)
        for i in range(NUM_LAYERS)
    }


def rows(caches: dict[str, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    """Raw bytes of the KV rows at ``slots``: uint8 ``[2, layers, n, row_bytes]`` (a copy)."""
    return torch.stack(
        [c.view(torch.uint8).view(2, NUM_SLOTS, -1)[:, slots] for c in caches.values()], dim=1
    )


def fill_sentinel(caches: dict[str, torch.Tensor], slots: torch.Tensor) -> None:
    """Writes the sentinel byte over every row at ``slots``."""
    for c in caches.values():
        c.view(torch.uint8).view(2, NUM_SLOTS, -1)[:, slots] = SENTINEL


def is_sentinel(caches: dict[str, torch.Tensor], slots: torch.Tensor) -> bool:
    """Whether every byte of the rows at ``slots`` is the sentinel."""
    return bool((rows(caches, slots) == SENTINEL).all())
