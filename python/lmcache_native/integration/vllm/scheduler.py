"""The scheduler side of the connector: what to load before a step and what to store after it.

Loads: when vLLM admits a request, the workers are asked (see :mod:`.lookup`) for the longest
stored prefix of its prompt; the tokens beyond vLLM's own cached prefix are claimed, never the
prompt's last token (vLLM must compute at least one token to sample from). After vLLM allocated
the blocks, the plan becomes a :class:`~.metadata.LoadSpec` in that step's metadata.

Saves: each step, a request whose computed tokens crossed a chunk boundary, or whose prompt just
finished, gets a :class:`~.metadata.SaveSpec` with what is new since its last one: the token ids
and block ids not sent before (all block ids again after a preemption replaced them). The worker
keeps each request's tokens, blocks and chunk-hash chain, decides (with its live config) how much
to store, and stores only from its last full chunk on, so a request's save work is linear in its
length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine.keys import KeyExtras, MMPlaceholder
from lmcache_native.integration.vllm.lookup import LookupClient
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.modes import ASYNC_LOADING, ASYNC_SAVING, enabled
from lmcache_native.integration.vllm.saving import copies_outlive_save
from lmcache_native.integration.vllm.stats import LMCacheNativeStats

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = logging.getLogger("lmcache_native.integration.vllm")

_LOOKUP_CACHE_MAX = 4096  # entries before the expired ones are swept


def request_extras(request: Request) -> KeyExtras | None:
    """What besides its token ids decides ``request``'s KV: cache salt, LoRA adapter, images.

    ``None`` for a plain request (its chunk keys are the plain token keys).
    """
    salt = getattr(request, "cache_salt", None) or None
    lora = getattr(request, "lora_request", None)
    mm = tuple(
        sorted(
            (
                MMPlaceholder(
                    str(f.identifier), int(f.mm_position.offset), int(f.mm_position.length)
                )
                for f in (getattr(request, "mm_features", None) or ())
            ),
            key=lambda m: (m.offset, m.length, m.identifier),
        )
    )
    extras = KeyExtras(
        cache_salt=str(salt) if salt is not None else None,
        lora_name=str(lora.lora_name) if lora is not None else None,
        lora_id=int(lora.lora_int_id) if lora is not None else None,
        mm=mm,
    )
    return None if extras.empty else extras


@dataclass
class _LoadPlan:
    """What ``get_num_new_matched_tokens`` last answered for a request."""

    hit: int  # stored prefix length (tokens), as the workers reported
    local: int  # tokens vLLM already had (block aligned)
    claimed: int  # tokens claimed beyond ``local``
    async_load: bool = False  # loaded in the background (a chunk is below the CPU tier)


@dataclass
class _Tracker:
    """A running request as the scheduler-side connector follows it."""

    request: Request
    extras: KeyExtras | None = None
    block_ids: list[int] = field(default_factory=list)
    sent_blocks: int = 0  # leading block_ids the workers have (from SaveSpecs)
    saved_upto: int = 0  # tokens already handed to a SaveSpec
    prompt_done: bool = False  # the prompt's end was handed to a SaveSpec
    load: LoadSpec | None = None


@dataclass
class SchedulerStats:
    """Counters of the scheduler side (read by tests and logs).

    Attributes:
        lookups: lookups made (asked of the workers).
        cached_lookups: lookups answered from the lookup cache.
        lookup_hit_tokens: tokens the workers reported as stored, summed over lookups.
        claimed_tokens: tokens claimed for loading (handed to vLLM as external hits).
        load_requests: requests given a load.
    """

    lookups: int = 0
    cached_lookups: int = 0
    lookup_hit_tokens: int = 0
    claimed_tokens: int = 0
    load_requests: int = 0


class SchedulerSide:
    """Scheduler-side state of one connector.

    Args:
        config: the engine configuration (``chunk_size`` is read from it).
        engine_id: vLLM's ``kv_transfer_config.engine_id``.
        world_size: workers of this vLLM engine (tensor x pipeline parallel).
        block_size: vLLM's cache block size.
        loads: look up and load stored prefixes (``kv_consumer``, ``kv_both``).
        saves: store what vLLM computes (``kv_producer``, ``kv_both``).
    """

    def __init__(
        self,
        config: LMCacheEngineConfig,
        engine_id: str,
        world_size: int,
        block_size: int,
        loads: bool = True,
        saves: bool = True,
    ) -> None:
        """Connects the lookup client; nothing is planned yet."""
        self.config = config
        self.loads = loads
        self.saves = saves
        self.chunk_size = int(config.get("chunk_size"))
        self.block_size = block_size
        self.client = LookupClient(engine_id, world_size)
        self.stats = SchedulerStats()
        self.vllm_stats = LMCacheNativeStats()  # what vLLM's stats get (see :mod:`.stats`)
        self._plans: dict[str, _LoadPlan] = {}
        self._trackers: dict[str, _Tracker] = {}
        self._skip_reason_logged: set[str] = set()
        self._building: LMCacheNativeConnectorMetadata | None = None
        self._released: list[str] = []  # leases the workers may let go, sent with the next step
        self._failed_logged: set[str] = set()
        # req_id -> (prompt length, hit, min_retrieve, below the CPU tier, expiry on ``clock``)
        self._lookup_cache: dict[str, tuple[int, int, int, bool, float]] = {}
        self.clock = time.monotonic
        # Asynchronous modes (see :mod:`.modes`).
        self.async_loading = loads and enabled(config, ASYNC_LOADING)
        self.async_saving = saves and enabled(config, ASYNC_SAVING)
        # Blocks are held for async saves only where their copy may outlive ``wait_for_save``.
        self.hold_blocks = self.async_saving and copies_outlive_save()
        self._async_loading: set[str] = set()  # requests vLLM holds for a background load
        self._pending_loads: list[_Tracker] = []  # background loads for the next metadata
        self._delayed: list[str] = []  # finished requests whose blocks wait for their stores

    # -- admission ---------------------------------------------------------------------------

    def _cacheable(self, request: Request) -> bool:
        reason = None
        if request.prompt_token_ids is None or getattr(request, "prompt_embeds", None) is not None:
            reason = "prompt given as embeddings"
        if reason is not None and reason not in self._skip_reason_logged:
            self._skip_reason_logged.add(reason)
            logger.info("LMCacheNativeConnector: not caching requests with %s", reason)
        return reason is None

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> int:
        """Tokens beyond ``num_computed_tokens`` that the workers can load for ``request``."""
        self._plans.pop(request.request_id, None)
        if not self.loads or not self._cacheable(request):
            return 0
        prompt = request.prompt_token_ids
        assert prompt is not None
        hit, min_retrieve, below = self._cached_lookup(request, prompt)
        # NOTE: vLLM must compute at least the last prompt token to sample the next one.
        claimable = min(hit, len(prompt) - 1)
        claimed = max(0, claimable - num_computed_tokens)
        if claimed == 0 or claimed < min_retrieve:
            if hit:
                self._release(request.request_id)
            return 0
        self._plans[request.request_id] = _LoadPlan(
            hit=hit,
            local=num_computed_tokens,
            claimed=claimed,
            async_load=self.async_loading and below,
        )
        return claimed

    def load_is_async(self, request: Request) -> bool:
        """Whether the load :meth:`get_num_new_matched_tokens` just planned is async.

        vLLM then holds the request until a worker reports it loaded.
        """
        plan = self._plans.get(request.request_id)
        return plan is not None and plan.async_load

    def _cached_lookup(self, request: Request, prompt: Sequence[int]) -> tuple[int, int, bool]:
        """The workers' answer for ``request``, from the lookup cache while it is fresh.

        vLLM asks again for a request it could not admit yet (no free blocks) every step; the
        answer of the first lookup is reused for ``lookup_cache_secs`` (extra config, default
        2 s; 0 turns the cache off), keyed by request id and prompt length, while the workers
        hold that lookup's lease. Releasing the request's lease or its end drops the entry.
        """
        req_id = request.request_id
        now = self.clock()
        cached = self._lookup_cache.get(req_id)
        if cached is not None and cached[0] == len(prompt) and cached[4] > now:
            self.stats.cached_lookups += 1
            self.vllm_stats.add("lookup_cache_hits")
            return cached[1], cached[2], cached[3]
        hit, min_retrieve, below = self.client.lookup_tiers(prompt, req_id, request_extras(request))
        self.stats.lookups += 1
        self.stats.lookup_hit_tokens += hit
        self.vllm_stats.add("lookups")
        self.vllm_stats.add("lookup_hit_tokens", hit)
        ttl = float(self.config.extra("lookup_cache_secs", 2.0))
        if ttl > 0 and req_id:
            if len(self._lookup_cache) >= _LOOKUP_CACHE_MAX:
                self._lookup_cache = {r: e for r, e in self._lookup_cache.items() if e[4] > now}
            self._lookup_cache[req_id] = (len(prompt), hit, min_retrieve, below, now + ttl)
        return hit, min_retrieve, below

    def _release(self, req_id: str) -> None:
        """Lets the workers drop what they hold for ``req_id``; forgets its cached lookup."""
        self._released.append(req_id)
        self._lookup_cache.pop(req_id, None)

    def forget_plan(self, request: Request) -> None:
        """Drops the load plan of ``request`` (its lookup failed)."""
        self._plans.pop(request.request_id, None)

    def plan_failed_load(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        """After a failure while planning a load vLLM already accepted: a load of nothing.

        The worker then reports the accepted tokens' blocks and vLLM recomputes them.
        """
        plan = self._plans.pop(request.request_id, None)
        if num_external_tokens <= 0:
            return
        start = plan.local if plan is not None else 0
        tracker = self._trackers.get(request.request_id)
        if tracker is None:
            tracker = _Tracker(request=request)
            self._trackers[request.request_id] = tracker
        self._replace_blocks(tracker, list(blocks.get_block_ids()[0]))
        tracker.load = LoadSpec(
            req_id=request.request_id,
            token_ids=[],
            block_ids=tracker.block_ids,
            start=start,
            end=start + num_external_tokens,
        )
        if plan is not None and plan.async_load:
            self._park(tracker)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        """Starts following ``request``; plans its load if vLLM accepted external tokens."""
        req_id = request.request_id
        plan = self._plans.pop(req_id, None)
        if plan is not None and num_external_tokens <= 0:
            self._release(req_id)  # vLLM did not take the hit: nothing to hold
        self._lookup_cache.pop(req_id, None)  # admitted: its next lookup is a new question
        if not self._cacheable(request):
            return
        tracker = self._trackers.get(req_id)
        if tracker is None:
            tracker = _Tracker(request=request, extras=request_extras(request))
            self._trackers[req_id] = tracker
        tracker.request = request
        self._replace_blocks(tracker, list(blocks.get_block_ids()[0]))
        tracker.load = None
        if num_external_tokens <= 0 or plan is None:
            return
        start = plan.local
        end = start + num_external_tokens
        if end > plan.hit:  # vLLM never grows a claim; refuse to write what was not found
            logger.warning(
                "request %s: vLLM asked to load %d tokens beyond a %d-token hit; reporting them "
                "as not loaded",
                req_id,
                end,
                plan.hit,
            )
            # A load of nothing: the worker reports the window's blocks, vLLM recomputes them.
            tracker.load = LoadSpec(req_id, [], tracker.block_ids, start, end)
            self._release(req_id)
            if plan.async_load:
                self._park(tracker)
            return
        chunk = self.chunk_size
        fetch = min(plan.hit, (end + chunk - 1) // chunk * chunk)
        prompt = request.prompt_token_ids
        assert prompt is not None
        tracker.load = LoadSpec(
            req_id=req_id,
            token_ids=list(prompt[:fetch]),
            block_ids=tracker.block_ids,
            start=start,
            end=end,
            extras=tracker.extras,
        )
        if plan.async_load:
            self._park(tracker)
        self.stats.claimed_tokens += num_external_tokens
        self.stats.load_requests += 1

    def _park(self, tracker: _Tracker) -> None:
        """Makes ``tracker``'s load a background one, sent with the next metadata.

        vLLM does not schedule the request until a worker reports it loaded.
        """
        assert tracker.load is not None
        tracker.load.async_load = True
        self._async_loading.add(tracker.load.req_id)
        self._pending_loads.append(tracker)

    def loads_finished(self, req_ids: Iterable[str]) -> None:
        """The workers reported these requests' background loads done."""
        self._async_loading.difference_update(req_ids)

    # -- per step ----------------------------------------------------------------------------

    def _save_spec(self, tracker: _Tracker, computed: int) -> SaveSpec | None:
        if not self.saves:
            return None
        request = tracker.request
        num_prompt = request.num_prompt_tokens
        chunk = self.chunk_size
        crossed = computed // chunk > tracker.saved_upto // chunk
        prompt_end = not tracker.prompt_done and computed >= num_prompt
        if not crossed and not prompt_end:
            return None
        sent = tracker.saved_upto
        first = sent == 0 and tracker.sent_blocks == 0
        tracker.saved_upto = max(sent, computed)
        tracker.prompt_done = tracker.prompt_done or prompt_end
        ids = tracker.block_ids
        # NOTE: block ids only grow while a request runs; after a preemption the request got
        # other blocks, so the workers' copy is checked and resent from the first difference.
        block_start = tracker.sent_blocks
        if block_start > len(ids):
            block_start = 0
        spec = SaveSpec(
            req_id=request.request_id,
            token_ids=list(request.all_token_ids[sent : tracker.saved_upto]),
            block_ids=list(ids[block_start:]),
            num_prompt_tokens=num_prompt,
            extras=tracker.extras if first else None,
            start=sent,
            block_start=block_start,
        )
        tracker.sent_blocks = len(ids)
        return spec

    @staticmethod
    def _replace_blocks(tracker: _Tracker, block_ids: list[int]) -> None:
        """The request's blocks were replaced (allocated anew): resend them all."""
        tracker.block_ids = list(block_ids)
        tracker.sent_blocks = 0

    def build_connector_meta(
        self, scheduler_output: SchedulerOutput
    ) -> LMCacheNativeConnectorMetadata:
        """This step's loads and saves; clears the step's load plans.

        A step that schedules no tokens is marked ``idle``: no forward runs, so the workers may
        wait a moment for a background load (see :mod:`.modes`).
        """
        scheduled = scheduler_output.num_scheduled_tokens
        meta = LMCacheNativeConnectorMetadata(idle=not any(scheduled.values()))
        self._building = meta

        def visit(req_id: str, computed_before: int) -> None:
            tracker = self._trackers.get(req_id)
            if tracker is None:
                return
            if tracker.load is not None:
                tracker.load.block_ids = list(tracker.block_ids)
                meta.loads.append(tracker.load)
                tracker.load = None
            computed = computed_before + scheduled.get(req_id, 0)
            try:
                spec = self._save_spec(tracker, computed)
            except Exception as e:  # one request's save is lost, not the step
                self._log_failure("planning a save", e)
                return
            if spec is not None:
                meta.saves.append(spec)

        for new_req in scheduler_output.scheduled_new_reqs:
            tracker = self._trackers.get(new_req.req_id)
            if tracker is not None:
                self._replace_blocks(tracker, list(new_req.block_ids[0]))
            visit(new_req.req_id, new_req.num_computed_tokens)

        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            tracker = self._trackers.get(req_id)
            if tracker is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                if new_blocks is not None:
                    self._replace_blocks(tracker, list(new_blocks[0]))
            elif new_blocks is not None:
                tracker.block_ids.extend(new_blocks[0])
            visit(req_id, cached.num_computed_tokens[i])

        for tracker in self._pending_loads:
            if tracker.load is not None:  # background loads: their requests are not scheduled
                tracker.load.block_ids = list(tracker.block_ids)
                meta.loads.append(tracker.load)
                tracker.load = None
        self._pending_loads = []
        for req_id in scheduler_output.finished_req_ids:
            self._trackers.pop(req_id, None)
        self._plans.clear()
        self._building = None
        self._take_lists(meta, scheduler_output)
        return meta

    def _take_lists(
        self, meta: LMCacheNativeConnectorMetadata, scheduler_output: SchedulerOutput | None
    ) -> None:
        """Hands ``meta`` the leases to release, the delayed frees and the preempted requests."""
        meta.released, self._released = self._released, []
        meta.delayed_free, self._delayed = self._delayed, []
        preempted = (
            getattr(scheduler_output, "preempted_req_ids", None) if self.hold_blocks else None
        )
        meta.preempted = sorted(preempted or ())

    def salvage_meta(self) -> LMCacheNativeConnectorMetadata:
        """After ``build_connector_meta`` failed: what it had built.

        Loads vLLM was promised must still reach the workers, which report what they cannot
        fill.
        """
        meta, self._building = self._building, None
        self._plans.clear()
        meta = meta if meta is not None else LMCacheNativeConnectorMetadata()
        self._take_lists(meta, None)
        return meta

    def _log_failure(self, what: str, exc: BaseException) -> None:
        cause = f"{what}:{type(exc).__qualname__}"
        if cause not in self._failed_logged:
            self._failed_logged.add(cause)
            logger.error("LMCacheNativeConnector: %s failed: %r", what, exc, exc_info=exc)

    def request_finished(self, request: Request) -> bool:
        """Forgets ``request``; the workers let go of what they held for it.

        Returns:
            Whether vLLM must keep its blocks until the workers report its stores done (with
            ``enable_async_saving`` on CUDA, where their copy may outlive ``wait_for_save``, for
            a request that had stores; never for one vLLM holds for a background load, whose
            blocks vLLM frees once that load is reported).
        """
        req_id = request.request_id
        tracker = self._trackers.pop(req_id, None)
        self._plans.pop(req_id, None)
        self._release(req_id)
        delay = (
            self.hold_blocks
            and tracker is not None
            and tracker.saved_upto > 0
            and req_id not in self._async_loading
        )
        if delay:
            self._delayed.append(req_id)
        return delay

    def close(self) -> None:
        """Closes the lookup connections."""
        self.client.close()
