"""The CPU twins' worker pool (csrc/common/thread_pool.cpp), driven through a kernel.

expand_slot_ranges splits its work over the pool's threads; these tests resize the pool between
calls and use it in a forked child.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from lmcache_native import _native, ops

# expand_slot_ranges splits its output in slices of >= 65536 slots: 5 slices here.
RANGES = torch.tensor([[0, 99_999], [500_000, 699_999]], dtype=torch.int64)
EXPECTED = torch.cat([torch.arange(0, 100_000), torch.arange(500_000, 700_000)])


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Puts the pool's thread count back after the test."""
    before = _native.num_threads()
    yield
    _native.set_num_threads(before)


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("restore_threads")
def test_resize_before_each_call_runs_every_slice() -> None:
    """Workers started by a resize wait for the next job instead of rerunning the last one.

    The kernel tests resize the pool around each multithreaded case. A worker rerunning the
    last job miscounted the workers still busy, so a call either hung or returned before all
    of its slices had run.
    """
    for i in range(300):
        _native.set_num_threads(2 + i % 3)
        got = ops.expand_slot_ranges(RANGES)
        assert torch.equal(got, EXPECTED), i


def _wait_or_kill(pid: int, seconds: float) -> int | None:
    """Returns the child's wait status, or None when it still ran after `seconds` (killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.usefixtures("restore_threads")
def test_forked_child_runs_multithreaded_kernels() -> None:
    """A child forked after the pool ran starts its own workers.

    The child (vLLM forks its workers) has none of the parent's worker threads; it must not
    wait for them.
    """
    _native.set_num_threads(2)
    assert torch.equal(ops.expand_slot_ranges(RANGES), EXPECTED)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            # NOTE: compared in numpy: torch's own OpenMP pool may not survive the fork.
            got = ops.expand_slot_ranges(RANGES).numpy()
            ok = _native.num_threads() == 2 and np.array_equal(got, EXPECTED.numpy())
            code = 0 if ok else 1
        finally:
            os._exit(code)
    status = _wait_or_kill(pid, 60)
    assert status is not None, "the forked child hung in a multithreaded kernel"
    assert os.waitstatus_to_exitcode(status) == 0
    assert torch.equal(ops.expand_slot_ranges(RANGES), EXPECTED)
