"""A registry of the engine's background threads, for ``/periodic-threads*`` and the metrics.

Two kinds of entries, reported alike (LMCache's ``PeriodicThread`` status fields):

- :class:`PeriodicThread`: a thread that runs a function every ``interval`` seconds and records
  each run (e.g. the chunk statistics auto-exit check);
- :func:`PeriodicThreadRegistry.register_probe`: a thread owned elsewhere (the storage
  manager's writer, the vLLM lookup server) whose run counts are read from its owner when the
  status is asked for, so nothing is counted twice. Such threads wake on work, not on a timer:
  their ``interval`` is ``None`` and they are active while alive.

A thread is *active* when it is running and, for a timed one, ran within three intervals (or
is still within its initial wait); *healthy* when it is active or was stopped on purpose.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class ThreadLevel(enum.Enum):
    """How much a thread's failure hurts (LMCache's levels)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass
class RunStats:
    """What a thread did so far.

    Attributes:
        total_runs: units of work done (timer runs, writes, lookups answered).
        failed_runs: those that failed.
        last_run_time: wall-clock time of the last one (0.0: none yet).
        message: a short note on the last run.
        extra_info: more figures about the last run (strings).
    """

    total_runs: int = 0
    failed_runs: int = 0
    last_run_time: float = 0.0
    last_duration_ms: float = 0.0
    success: bool = True
    message: str = ""
    extra_info: dict[str, str] = field(default_factory=dict)


class _Entry:
    """One registered thread: its settings and how to read its thread and its runs."""

    def __init__(
        self,
        name: str,
        level: ThreadLevel,
        interval: float | None,
        init_wait: float,
        thread: Callable[[], threading.Thread | None],
        runs: Callable[[], RunStats],
        stopped: Callable[[], bool],
    ) -> None:
        self.name = name
        self.level = level
        self.interval = interval
        self.init_wait = init_wait
        self._thread = thread
        self._runs = runs
        self._stopped = stopped
        self.start_time = time.time()

    @property
    def is_running(self) -> bool:
        t = self._thread()
        return t is not None and t.is_alive()

    def status(self) -> dict[str, Any]:
        """This thread's status.

        LMCache's ``PeriodicThread.get_status()`` fields, plus ``healthy``, ``alive`` and
        ``thread_id``.
        """
        runs = self._runs()
        now = time.time()
        running = self.is_running
        if not running:
            active = False
        elif self.interval is None or self.interval <= 0:
            active = True
        elif runs.last_run_time == 0.0:
            active = now - self.start_time < self.init_wait + 3 * self.interval
        else:
            active = now - runs.last_run_time < 3 * self.interval
        stopped = self._stopped()
        t = self._thread()
        last = None
        if runs.last_run_time > 0:
            last = {
                "timestamp": runs.last_run_time,
                "duration_ms": runs.last_duration_ms,
                "success": runs.success,
                "message": runs.message,
                "extra_info": dict(runs.extra_info),
            }
        return {
            "name": self.name,
            "level": self.level.value,
            "interval": self.interval,
            "init_wait": self.init_wait,
            "is_running": running,
            "is_active": active,
            "last_run_time": runs.last_run_time,
            "last_run_ago": (now - runs.last_run_time) if runs.last_run_time > 0 else None,
            "total_runs": runs.total_runs,
            "failed_runs": runs.failed_runs,
            "success_rate": (
                (runs.total_runs - runs.failed_runs) / runs.total_runs * 100
                if runs.total_runs > 0
                else None
            ),
            "last_summary": last,
            "alive": running,
            "stopped": stopped,
            "healthy": active or stopped,
            "thread_id": t.ident if t is not None else None,
        }


class PeriodicThreadRegistry:
    """The background threads of one engine (thread-safe)."""

    def __init__(self) -> None:
        """An empty registry."""
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def register_probe(
        self,
        name: str,
        level: ThreadLevel,
        thread: Callable[[], threading.Thread | None],
        runs: Callable[[], RunStats],
        *,
        interval: float | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        """Registers a thread owned elsewhere (replacing one of the same name).

        Args:
            name: the thread's name (the ``/periodic-threads/{name}`` path segment).
            level: its importance.
            thread: returns the thread now (``None`` when not started).
            runs: returns its run counts, read from the owner.
            interval: seconds between timed runs; ``None`` for a thread woken by work.
            stopped: returns whether the owner stopped it on purpose (then not unhealthy).
        """
        entry = _Entry(name, level, interval, 0.0, thread, runs, stopped or (lambda: False))
        with self._lock:
            self._entries[name] = entry

    def register(self, thread: PeriodicThread) -> None:
        """Registers a :class:`PeriodicThread`."""
        entry = _Entry(
            thread.name,
            thread.level,
            thread.interval,
            thread.init_wait,
            lambda: thread.thread,
            thread.run_stats,
            lambda: thread.stopped,
        )
        with self._lock:
            self._entries[thread.name] = entry

    def unregister(self, name: str) -> bool:
        """Forgets ``name``; whether it was registered."""
        with self._lock:
            return self._entries.pop(name, None) is not None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        with self._lock:
            return list(self._entries)

    def status(self, name: str) -> dict[str, Any] | None:
        """The status of ``name``, or ``None`` when no such thread is registered."""
        with self._lock:
            entry = self._entries.get(name)
        return entry.status() if entry is not None else None

    def statuses(self) -> list[dict[str, Any]]:
        """Every registered thread's status, in registration order."""
        with self._lock:
            entries = list(self._entries.values())
        return [e.status() for e in entries]

    def summary(self, statuses: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Counts of the threads, as LMCache reports them.

        ``total_count``, ``running_count``, ``active_count`` and ``by_level`` (level ->
        total/running/active).
        """
        all_status = self.statuses() if statuses is None else statuses
        by_level: dict[str, dict[str, int]] = {}
        for level in ThreadLevel:
            of_level = [s for s in all_status if s["level"] == level.value]
            by_level[level.value] = {
                "total": len(of_level),
                "running": sum(1 for s in of_level if s["is_running"]),
                "active": sum(1 for s in of_level if s["is_active"]),
            }
        return {
            "total_count": len(all_status),
            "running_count": sum(1 for s in all_status if s["is_running"]),
            "active_count": sum(1 for s in all_status if s["is_active"]),
            "by_level": by_level,
        }

    def unhealthy(self) -> list[dict[str, Any]]:
        """The threads that are not healthy.

        Critical and high threads that are running but not active (LMCache's health rule), plus
        those that died without being stopped.
        """
        out = []
        for s in self.statuses():
            if s["level"] not in (ThreadLevel.CRITICAL.value, ThreadLevel.HIGH.value):
                continue
            if s["healthy"]:
                continue
            out.append(
                {
                    "name": s["name"],
                    "level": s["level"],
                    "last_run_ago": s["last_run_ago"],
                    "interval": s["interval"],
                    "is_running": s["is_running"],
                }
            )
        return out


class PeriodicThread:
    """A daemon thread that calls ``fn`` every ``interval`` seconds and records each run.

    ``fn`` returns a short message (or ``None``); an exception counts as a failed run (logged)
    and the thread keeps going.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        fn: Callable[[], str | None],
        level: ThreadLevel = ThreadLevel.MEDIUM,
        init_wait: float = 0.0,
    ) -> None:
        """Prepares the thread; ``start`` runs it.

        Args:
            name: the thread's name.
            interval: seconds between runs.
            fn: the work of one run.
            level: its importance.
            init_wait: seconds before the first run.
        """
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.name = name
        self.interval = float(interval)
        self.level = level
        self.init_wait = float(init_wait)
        self._fn = fn
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._runs = RunStats()
        self.thread: threading.Thread | None = None
        self.stopped = False

    def start(self) -> None:
        """Starts the thread (no-op when already started)."""
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread and waits for it."""
        self.stopped = True
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def run_stats(self) -> RunStats:
        """A copy of the run counts."""
        with self._lock:
            r = self._runs
            return RunStats(
                r.total_runs,
                r.failed_runs,
                r.last_run_time,
                r.last_duration_ms,
                r.success,
                r.message,
                dict(r.extra_info),
            )

    def run_once(self) -> None:
        """One run of ``fn``, recorded."""
        start = time.time()
        t0 = time.perf_counter()
        try:
            message = self._fn() or ""
            ok = True
        except Exception as exc:
            logger.exception("periodic thread %s: run failed", self.name)
            message = f"{type(exc).__name__}: {exc}"
            ok = False
        with self._lock:
            r = self._runs
            r.total_runs += 1
            r.failed_runs += 0 if ok else 1
            r.last_run_time = start
            r.last_duration_ms = (time.perf_counter() - t0) * 1000.0
            r.success = ok
            r.message = message

    def _loop(self) -> None:
        if self.init_wait > 0 and self._stop.wait(self.init_wait):
            return
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.interval):
                return
