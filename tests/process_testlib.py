"""Stopping the real servers the tests start (redis-server, Prometheus, ...)."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL when it has not exited after ``grace`` seconds.

    Args:
        proc: the process (``None`` or an exited one: nothing to do).
        grace: seconds to wait for a clean exit.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
