"""The scheduler side's decisions, driven step by step with vLLM-shaped inputs.

The lookup goes to a real in-process lookup server; requests, blocks and scheduler outputs are
plain objects with the attributes vLLM's have. What is checked: the claim (never the last prompt
token, only beyond vLLM's own prefix, ``min_retrieve_tokens``), the load window handed to the
worker, and when saves are emitted.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm")

import vllm_testlib as vt
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine.keys import KeyExtras, MMPlaceholder
from lmcache_native.integration.vllm.lookup import LookupServer
from lmcache_native.integration.vllm.scheduler import SchedulerSide

pytestmark = pytest.mark.vllm

CHUNK, BLOCK = 64, 32


class _Store:
    """What the fake worker holds: a stored prefix length, and the min_retrieve_tokens."""

    def __init__(self) -> None:
        self.hit = 0
        self.min_retrieve = 0
        self.asked: list[int] = []
        self.extras: list[Any] = []

    def __call__(self, req_id: str, tokens: list[int], extras: Any) -> tuple[int, int]:  # noqa: ARG002
        # (the lookup server's callback signature)
        self.asked.append(len(tokens))
        self.extras.append(extras)
        return min(self.hit, len(tokens)), self.min_retrieve


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    store = _Store()
    # NOTE: these tests change what the worker holds between lookups of one request, so the
    # scheduler's lookup cache is off here (it is tested in test_vllm_lookup_path.py).
    with vt.lookup_scheduler("sched-test", store, lookup_cache_secs=0) as s:
        yield s, store


def _blocks(ids: list[int]) -> SimpleNamespace:
    return SimpleNamespace(get_block_ids=lambda: (list(ids),))


def _output(
    new: list[tuple[str, list[int], int]] = (),  # type: ignore[assignment]
    cached: list[tuple[str, list[int] | None, int, bool]] = (),  # type: ignore[assignment]
    scheduled: dict[str, int] | None = None,
    finished: set[str] | None = None,
) -> SimpleNamespace:
    return SimpleNamespace(
        scheduled_new_reqs=[
            SimpleNamespace(req_id=r, block_ids=(b,), num_computed_tokens=c) for r, b, c in new
        ],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[r for r, *_ in cached],
            new_block_ids=[(b,) if b is not None else None for _, b, _, _ in cached],
            num_computed_tokens=[c for _, _, c, _ in cached],
            resumed_req_ids={r for r, _, _, resumed in cached if resumed},
        ),
        num_scheduled_tokens=scheduled or {},
        finished_req_ids=finished or set(),
    )


def test_claim_excludes_last_token_and_vllm_prefix(side: Any) -> None:
    s, store = side
    prompt = list(range(192))  # 3 chunks exactly
    req = vt.request("a", prompt)
    store.hit = 192
    assert s.get_num_new_matched_tokens(req, 0) == 191  # the last token is always computed
    assert s.get_num_new_matched_tokens(req, 64) == 127  # beyond vLLM's own 64
    store.hit = 128
    assert s.get_num_new_matched_tokens(req, 128) == 0
    store.hit = 0
    assert s.get_num_new_matched_tokens(req, 0) == 0
    assert store.asked == [192] * 4


def test_min_retrieve_tokens_from_the_worker(side: Any) -> None:
    s, store = side
    req = vt.request("a", list(range(300)))
    store.hit, store.min_retrieve = 128, 129
    assert s.get_num_new_matched_tokens(req, 0) == 0
    store.min_retrieve = 128
    assert s.get_num_new_matched_tokens(req, 0) == 128


def test_prompt_embeds_are_not_looked_up(side: Any) -> None:
    s, store = side
    store.hit = 128
    for req in (
        vt.request("e", None, all_token_ids=[], num_prompt_tokens=0),
        vt.request("f", list(range(200)), prompt_embeds=object()),
    ):
        assert s.get_num_new_matched_tokens(req, 0) == 0
    assert store.asked == []


def test_salt_lora_and_multimodal_requests_are_looked_up_with_their_extras(side: Any) -> None:
    s, store = side
    store.hit = 128
    feature = SimpleNamespace(identifier="img-1", mm_position=SimpleNamespace(offset=10, length=20))
    lora = SimpleNamespace(lora_name="sql", lora_int_id=4, lora_path="/a")
    reqs = [
        vt.request("p", list(range(200))),
        vt.request("s", list(range(200)), cache_salt="tenant-a"),
        vt.request("l", list(range(200)), lora_request=lora),
        vt.request("m", list(range(200)), mm_features=[feature]),
    ]
    for req in reqs:
        assert s.get_num_new_matched_tokens(req, 0) == 128
    plain, salted, lora_x, mm_x = store.extras
    assert plain is None
    assert salted == KeyExtras(cache_salt="tenant-a")
    assert lora_x == KeyExtras(lora_name="sql", lora_id=4)
    assert mm_x == KeyExtras(mm=(MMPlaceholder("img-1", 10, 20),))
    # The plans carry the extras to the worker's load and save.
    s.update_state_after_alloc(reqs[1], _blocks([1, 2, 3, 4, 5, 6, 7]), 128)
    meta = s.build_connector_meta(
        _output(new=[("s", [1, 2, 3, 4, 5, 6, 7], 0)], scheduled={"s": 200})
    )
    assert meta.loads[0].extras == salted
    assert meta.saves[0].extras == salted


def test_load_window_and_saves_of_one_request(side: Any) -> None:
    s, store = side
    prompt = list(range(1000, 1200))  # 200 tokens: 3 full chunks + 8
    req = vt.request("r", prompt)
    store.hit = 192
    assert s.get_num_new_matched_tokens(req, 32) == 160  # vLLM holds the first block
    blocks = list(range(10, 17))  # 7 blocks hold 224 slots
    s.update_state_after_alloc(req, _blocks(blocks), 160)
    meta = s.build_connector_meta(_output(new=[("r", blocks, 192)], scheduled={"r": 8}))
    (load,) = meta.loads
    assert (load.start, load.end) == (32, 192)
    assert load.token_ids == prompt[:192]
    assert load.block_ids == blocks
    # The prompt is complete after this step: one save of all 200 prompt tokens.
    (save,) = meta.saves
    assert save.token_ids == prompt
    assert save.num_prompt_tokens == 200
    assert save.block_ids == blocks
    # Decode steps: no save until a chunk boundary (256) is crossed.
    for computed in range(200, 255):
        req.all_token_ids.append(7)
        meta = s.build_connector_meta(
            _output(cached=[("r", None, computed, False)], scheduled={"r": 1})
        )
        assert meta.loads == [], computed
        assert meta.saves == [], computed
    req.all_token_ids.extend([7, 7])
    meta = s.build_connector_meta(_output(cached=[("r", [17], 255, False)], scheduled={"r": 1}))
    (save,) = meta.saves
    # Only what is new: tokens 200..255 and block 17.
    assert (save.start, len(save.token_ids), save.block_start) == (200, 56, 7)
    assert save.block_ids == [17]
    assert save.extras is None
    s.request_finished(req)
    assert (
        s.build_connector_meta(_output(cached=[("r", None, 256, False)], scheduled={"r": 1})).saves
        == []
    )


def _ask(side: Any, req_id: str, prompt_len: int, hit: int) -> tuple[Any, Any, list[int]]:
    """A new request whose lookup the worker answers with ``hit`` tokens (checked)."""
    s, store = side
    prompt = list(range(prompt_len))
    req = vt.request(req_id, prompt)
    store.hit = hit
    assert s.get_num_new_matched_tokens(req, 0) == hit
    return s, req, prompt


def test_no_load_when_vllm_declines_and_chunked_prefill_saves(side: Any) -> None:
    s, req, prompt = _ask(side, "c", 300, hit=0)
    s.update_state_after_alloc(req, _blocks([1, 2, 3, 4]), 0)
    # Chunked prefill: 100 tokens per step.
    meta = s.build_connector_meta(_output(new=[("c", [1, 2, 3, 4], 0)], scheduled={"c": 100}))
    assert meta.loads == []
    assert [len(x.token_ids) for x in meta.saves] == [100]  # crossed the 64 boundary
    assert meta.saves[0].token_ids == prompt[:100]
    assert meta.saves[0].block_ids == [1, 2, 3, 4]
    meta = s.build_connector_meta(
        _output(cached=[("c", [5, 6, 7], 100, False)], scheduled={"c": 100})
    )
    # Each save sends only what is new since the last one.
    ((start, tokens, block_start, block_ids),) = [
        (x.start, x.token_ids, x.block_start, x.block_ids) for x in meta.saves
    ]
    assert (start, tokens, block_start, block_ids) == (100, prompt[100:200], 4, [5, 6, 7])
    meta = s.build_connector_meta(
        _output(cached=[("c", [8, 9, 10], 200, False)], scheduled={"c": 100})
    )
    assert [(x.start, len(x.token_ids), x.block_ids) for x in meta.saves] == [
        (200, 100, [8, 9, 10])  # the prompt's end
    ]


def test_preempted_request_resumes_with_its_new_blocks(side: Any) -> None:
    s, store = side
    prompt = list(range(128))
    req = vt.request("p", prompt)
    store.hit = 0
    s.get_num_new_matched_tokens(req, 0)
    s.update_state_after_alloc(req, _blocks([1, 2, 3, 4]), 0)
    s.build_connector_meta(_output(new=[("p", [1, 2, 3, 4], 0)], scheduled={"p": 128}))
    # Preempted, then resumed with other blocks; now the prefix is stored.
    store.hit = 128
    assert s.get_num_new_matched_tokens(req, 0) == 127
    s.update_state_after_alloc(req, _blocks([9, 8, 7, 6]), 127)
    meta = s.build_connector_meta(
        _output(cached=[("p", [9, 8, 7, 6], 0, True)], scheduled={"p": 1})
    )
    (load,) = meta.loads
    assert load.block_ids == [9, 8, 7, 6]
    assert (load.start, load.end) == (0, 127)
    # The next save resends every block (the workers' copy names the freed ones).
    req.all_token_ids.extend([5] * 70)
    meta = s.build_connector_meta(_output(cached=[("p", [5], 128, False)], scheduled={"p": 64}))
    (save,) = meta.saves
    assert (save.start, len(save.token_ids)) == (128, 64)
    assert (save.block_start, save.block_ids) == (0, [9, 8, 7, 6, 5])


def test_roles_producer_never_loads_consumer_never_saves(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    store = _Store()
    store.hit = 192
    server = LookupServer.start("roles", 0, store)
    config = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK)
    prompt = list(range(200))
    try:
        for loads, saves in ((False, True), (True, False), (True, True)):
            s = SchedulerSide(config, "roles", 1, BLOCK, loads=loads, saves=saves)
            req = vt.request(f"r{loads}{saves}", prompt)
            claimed = s.get_num_new_matched_tokens(req, 0)
            assert claimed == (192 if loads else 0)
            blocks = list(range(7))
            s.update_state_after_alloc(req, _blocks(blocks), claimed)
            meta = s.build_connector_meta(
                _output(
                    new=[(req.request_id, blocks, claimed)],
                    scheduled={req.request_id: 200 - claimed},
                )
            )
            assert len(meta.loads) == (1 if loads else 0)
            assert len(meta.saves) == (1 if saves else 0)
            s.close()
    finally:
        server.stop()
    assert store.asked == [200, 200]  # the producer never asked


def test_a_claim_vllm_grew_is_reported_not_loaded(side: Any) -> None:
    s, req, _ = _ask(side, "g", 200, hit=128)
    blocks = list(range(1, 8))
    s.update_state_after_alloc(req, _blocks(blocks), 160)  # more than was found
    meta = s.build_connector_meta(_output(new=[("g", blocks, 160)], scheduled={"g": 40}))
    (load,) = meta.loads
    # A load of nothing over the whole window: the worker reports every block of it.
    assert load.token_ids == []
    assert (load.start, load.end) == (0, 160)
    assert meta.released == ["g"]
