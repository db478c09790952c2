"""A real Prometheus server for tests.

Debian's ``/usr/bin/prometheus`` scraping given targets every second, queried through its HTTP API.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from process_testlib import stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def require_prometheus() -> str:
    """The Prometheus binary; skips the test when it is not installed (CI installs it)."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("needs Debian's prometheus binary (apt-get install prometheus)")
    return PROMETHEUS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus process scraping ``targets`` (``host:port``) every second.

    Args:
        workdir: where the config, the TSDB and the log go.
        targets: ``127.0.0.1:<port>`` of each admin API to scrape at ``/metrics``.
    """

    def __init__(self, workdir: Path, targets: Sequence[str]) -> None:
        binary = require_prometheus()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        listed = ", ".join(f"'{t}'" for t in targets)
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: lmcache\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: [{listed}]\n"
        )
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=5)
        try:
            self.wait_for(lambda: self._ready(), "Prometheus ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Polls ``check()`` every 0.5 s until it returns something truthy.

        At most ``timeout`` seconds); returns that value.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {self.tail()}")
            time.sleep(0.5)

    def tail(self) -> str:
        """The end of Prometheus' log."""
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` (``/api/v1/query``)."""
        r = self.http.get("/api/v1/query", params={"query": promql})
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single finite value of ``promql``, or ``None`` (no result yet, or NaN)."""
        result = self.query(promql)
        if len(result) != 1:
            return None
        v = float(result[0]["value"][1])
        return v if math.isfinite(v) else None

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``/api/v1/targets``)."""
        r = self.http.get("/api/v1/targets")
        r.raise_for_status()
        return list(r.json()["data"]["activeTargets"])

    def wait_until_scraped(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Waits until every target was scraped successfully at least once."""

        def all_up() -> list[dict[str, Any]] | None:
            ts = self.targets()
            return ts if ts and all(t["health"] == "up" for t in ts) else None

        return list(self.wait_for(all_up, "every target up", timeout))

    def stop(self) -> None:
        """Stops Prometheus (SIGTERM, then SIGKILL) and closes its log."""
        self.http.close()
        stop_process(self.proc, grace=20)
        self._log.close()
