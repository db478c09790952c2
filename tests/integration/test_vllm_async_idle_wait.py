"""The idle wait of async loads: a step without a forward waits a moment for a background load.

Worker side (a real engine over vLLM-shaped CPU caches and a real disk tier; the background load
is held at a gate before its real retrieve): in a step vLLM marked ``idle``, ``get_finished``
waits for the running load and names it in that same call; in a step with a forward it does not
wait; the wait is bounded (a load that does not finish is named by a later call); a call that no
``wait_for_save`` of an idle step preceded, or with no load running, does not wait. Scheduler
side: a step that schedules no tokens is marked ``idle``, one that schedules any is not. Config:
``async_load_idle_wait_ms`` is checked. On a real vLLM: a disk-tier hit, alone and beside a miss,
generates the tokens of an engine without the connector, every wait happened in a step that
scheduled no tokens, and the step that reported the load had waited for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.errors import ConfigError
from lmcache_native.integration.vllm import loading
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.modes import idle_wait_secs
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

PROMPT = vt.prompt(900, 200)
FULL = 192  # three chunks of 64
CPU_TIER = "LocalCPUBackend"
WAIT_SECS = 60.0  # an upper bound on a background job, never a timing assertion
ASYNC = {"enable_async_loading": True}


class Gate:
    """Holds the engine's retrieves (on the loader threads) until :meth:`open`."""

    def __init__(self, worker: WorkerSide) -> None:
        self.opened = threading.Event()
        engine = worker.engine
        assert engine is not None
        real = engine.retrieve

        def retrieve(*args: Any, **kwargs: Any) -> Any:
            self.opened.wait(WAIT_SECS)
            return real(*args, **kwargs)

        engine.retrieve = retrieve  # type: ignore[method-assign]

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerSide]:
    """A worker whose CPU tier is empty and whose disk tier holds PROMPT's three chunks."""
    w, _ = vt.unit_worker(
        "idle-wait",
        40,
        7,
        local_disk=str(tmp_path / "disk"),
        max_local_disk_size=0.1,
        extra_config=ASYNC,
    )
    save = SaveSpec("s", PROMPT, [1, 2, 3, 4, 5, 6, 7], num_prompt_tokens=len(PROMPT))
    w.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    assert w.engine is not None
    assert w.engine.flush(timeout=30)
    w.engine.clear([CPU_TIER])
    assert w.lookup_tiers("probe", PROMPT) == (FULL, 0, True)
    w.release(["probe"])
    yield w
    w.close()


class Waits:
    """Every wait of the load path for its futures, and what to run as one begins."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []  # (timeout, return_when)
        self.hooks: list[Callable[[], None]] = []  # run on the waiting thread


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    """Records the load path's waits (the real wait runs)."""
    seen = Waits()
    real = loading.wait_futures

    def wait(fs: Any, timeout: float, return_when: str) -> Any:
        seen.calls.append((timeout, return_when))
        for hook in seen.hooks:
            hook()
        return real(fs, timeout, return_when)

    monkeypatch.setattr(loading, "wait_futures", wait)
    return seen


def _start_load(worker: WorkerSide) -> Gate:
    gate = Gate(worker)
    spec = LoadSpec("r", PROMPT[:FULL], [20, 21, 22, 23, 24, 25, 26], 0, FULL, async_load=True)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    return gate


def _step(worker: WorkerSide, idle: bool) -> tuple[set[str], set[str]]:
    """The end of a step as vLLM runs it: ``wait_for_save``, then ``get_finished``."""
    worker.wait_for_save(LMCacheNativeConnectorMetadata(idle=idle))
    return worker.get_finished(set())


def _until_reported(worker: WorkerSide) -> set[str]:
    """Forward steps until a background load is reported (at most WAIT_SECS)."""
    deadline = time.monotonic() + WAIT_SECS
    while time.monotonic() < deadline:
        done = _step(worker, idle=False)[1]
        if done:
            return done
        time.sleep(0.01)
    return set()


def test_idle_step_waits_for_the_running_load_and_reports_it(
    worker: WorkerSide, waits: Waits
) -> None:
    worker.idle_wait = WAIT_SECS  # longer than any load: the wait ends when the load does
    gate = _start_load(worker)
    waits.hooks.append(gate.open)
    # The load can only finish once the step waits for it; the same call names it.
    assert _step(worker, idle=True) == (set(), {"r"})
    assert waits.calls == [(WAIT_SECS, FIRST_COMPLETED)]
    assert worker.take_load_errors() == set()
    assert (worker.stats.loaded_tokens, worker.stats.async_loads) == (FULL, 1)
    assert _step(worker, idle=True) == (set(), set())  # named once; nothing left to wait for
    assert len(waits.calls) == 1


def test_forward_step_does_not_wait(worker: WorkerSide, waits: Waits) -> None:
    worker.idle_wait = WAIT_SECS
    gate = _start_load(worker)
    assert _step(worker, idle=False) == (set(), set())
    # An idle step's flag is used once: a get_finished without its wait_for_save does not wait.
    worker.idle_wait = 0.005
    assert _step(worker, idle=True) == (set(), set())
    assert waits.calls == [(0.005, FIRST_COMPLETED)]
    waits.calls.clear()
    assert worker.get_finished(set()) == (set(), set())
    assert waits.calls == []
    gate.open()
    assert _until_reported(worker) == {"r"}
    assert waits.calls == []
    assert worker.stats.loaded_tokens == FULL


def test_idle_wait_is_bounded_when_the_load_hangs(worker: WorkerSide, waits: Waits) -> None:
    assert worker.idle_wait == 0.005  # the default bound, 5 ms
    gate = _start_load(worker)
    assert _step(worker, idle=True) == (set(), set())  # returned while the load still hangs
    assert waits.calls == [(0.005, FIRST_COMPLETED)]
    assert worker.stats.async_loads == 0
    gate.open()
    assert _until_reported(worker) == {"r"}
    assert (worker.stats.loaded_tokens, worker.stats.async_loads) == (FULL, 1)


def test_idle_step_without_a_running_load_does_not_wait(worker: WorkerSide, waits: Waits) -> None:
    assert _step(worker, idle=True) == (set(), set())
    # A load that never started (no engine) is reported at once, without a wait.
    engine, worker.engine = worker.engine, None
    spec = LoadSpec("r", PROMPT[:FULL], [20, 21, 22, 23, 24, 25, 26], 0, FULL, async_load=True)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    worker.engine = engine
    assert _step(worker, idle=True) == (set(), {"r"})
    assert worker.take_load_errors() == {20, 21, 22, 23, 24, 25}
    assert waits.calls == []


def _output(scheduled: dict[str, int]) -> SimpleNamespace:
    return SimpleNamespace(
        scheduled_new_reqs=[],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set()
        ),
        num_scheduled_tokens=scheduled,
        total_num_scheduled_tokens=sum(scheduled.values()),
        finished_req_ids=set(),
        preempted_req_ids=set(),
    )


def test_scheduler_marks_steps_without_tokens_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    with vt.lookup_scheduler("idle-s", lambda _r, _t, _e: (0, 0), **ASYNC) as sched:
        assert sched.build_connector_meta(_output({})).idle
        assert not sched.build_connector_meta(_output({"a": 1})).idle
        assert not sched.build_connector_meta(_output({"a": 0, "b": 16})).idle
        assert sched.salvage_meta().idle is False


@pytest.mark.parametrize(
    ("value", "secs"), [(None, 0.005), (0, 0.0), (2.5, 0.0025), ("7", 0.007), (1000, 1.0)]
)
def test_idle_wait_config(value: Any, secs: float) -> None:
    extra = {} if value is None else {"async_load_idle_wait_ms": value}
    config = LMCacheEngineConfig.from_defaults(extra_config=extra)
    assert idle_wait_secs(config) == pytest.approx(secs)


@pytest.mark.parametrize("value", [-1, 1001, "soon", True, float("nan"), [5]])
def test_idle_wait_config_rejects_bad_values(value: Any) -> None:
    config = LMCacheEngineConfig.from_defaults(
        extra_config={"async_load_idle_wait_ms": value, **ASYNC}
    )
    with pytest.raises(ConfigError, match="async_load_idle_wait_ms must be a number") as raised:
        idle_wait_secs(config)
    assert raised.value.key == "extra_config"
    vllm_config = SimpleNamespace(cache_config=SimpleNamespace(block_size=vt.BLOCK_SIZE))
    with pytest.raises(ConfigError, match="async_load_idle_wait_ms"):
        WorkerSide(vllm_config, None, config, "bad", rank=0, world_size=1)  # type: ignore[arg-type]


# -- a real vLLM -----------------------------------------------------------------------------------

NEW = vt.prompt(901, 200)  # never stored: a miss


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = vt.write_model(tmp_path_factory.mktemp("tiny-llama"))
    out: dict[str, Any] = {"baseline": vt.baseline(model, {"A": PROMPT, "NEW": NEW})}
    cfg = {
        "chunk_size": vt.CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "local_disk": str(tmp_path_factory.mktemp("idle-disk")),
        "max_local_disk_size": 0.5,
        **ASYNC,
    }
    with vt.in_process_llm(model, cfg) as llm:
        worker = vt.worker_connector().worker_side
        engine = worker.engine
        assert engine is not None, worker.disabled_reason
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        step_tokens = [0]
        real_schedule = scheduler.schedule

        def schedule(*args: Any, **kwargs: Any) -> Any:
            output = real_schedule(*args, **kwargs)
            step_tokens[0] = output.total_num_scheduled_tokens
            return output

        scheduler.schedule = schedule
        wait_steps: list[int] = []  # the scheduled tokens of each step that waited
        real_wait = worker.wait_for_loads

        def wait_for_loads(timeout: float) -> bool:
            wait_steps.append(step_tokens[0])
            return bool(real_wait(timeout))

        worker.wait_for_loads = wait_for_loads
        reports: list[tuple[set[str], bool]] = []  # (loads named, the call waited)
        real_finished = worker.get_finished

        def get_finished(finished: set[str]) -> tuple[set[str], set[str]]:
            before = len(wait_steps)
            sending, recving = real_finished(finished)
            if recving:
                reports.append((set(recving), len(wait_steps) > before))
            return sending, recving

        worker.get_finished = get_finished
        out["stored"] = vt.generate(llm, PROMPT)[0]
        assert engine.flush(timeout=30)
        engine.clear([CPU_TIER])
        out["alone"] = vt.generate(llm, PROMPT)
        out["alone_reports"], out["alone_waits"] = list(reports), list(wait_steps)
        engine.clear([CPU_TIER])
        reports.clear()
        wait_steps.clear()
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=vt.MAX_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False
        )
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in (PROMPT, NEW)], params, use_tqdm=False
        )
        out["batch"] = [list(o.outputs[0].token_ids) for o in outs]
        out["batch_reports"], out["batch_waits"] = list(reports), list(wait_steps)
        out["async_loads"] = worker.stats.async_loads
        out["loaded"] = worker.stats.loaded_tokens
    vt.report(f"async-idle-wait-{vt.DTYPE}", out)
    return out


def test_vllm_lone_disk_hit_is_reported_by_a_waiting_idle_step(vllm_run: dict[str, Any]) -> None:
    base = vllm_run["baseline"]
    assert vllm_run["stored"] == base["A"]
    tokens, cached = vllm_run["alone"]
    assert tokens == base["A"]
    assert cached >= FULL
    # vLLM held the request while its load ran: every step was idle, and the one that named
    # the load had waited for it.
    assert [waited for _, waited in vllm_run["alone_reports"]] == [True]
    assert vllm_run["alone_waits"]
    assert set(vllm_run["alone_waits"]) == {0}


def test_vllm_disk_hit_beside_a_miss_never_waits_in_a_forward(vllm_run: dict[str, Any]) -> None:
    base = vllm_run["baseline"]
    assert vllm_run["batch"] == [base["A"], base["NEW"]]
    assert [len(names) for names, _ in vllm_run["batch_reports"]] == [1]  # A, named once
    assert set(vllm_run["batch_waits"]) <= {0}  # steps that ran the miss's forward never waited
    assert (vllm_run["async_loads"], vllm_run["loaded"]) == (2, 2 * FULL)
