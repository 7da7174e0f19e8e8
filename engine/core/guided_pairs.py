"""vLLM's scheduler, with each guided request's unconditional companion scheduled in lockstep with it.

Why and how guidance works as batch rows: ``engine/worker/guidance.py``. This is the engine-core half. A
companion is a vLLM request that only this scheduler knows: made here for one image span of its request
(the *row*), its prompt the unconditional sequence so far (``cfg_uncond_prompt``, then the row's reply up to
and including the span's BOI; the span's BOI alone after the prompt where the family guides from the image
alone), its keys and values in vLLM's paged cache like any request's (so the prefix cache shares a negative
prompt between companions and the KV usage metric counts them), and its outputs never reported.

Lockstep, both or neither: companions are kept out of vLLM's own scheduling (not in ``running``, so vLLM
neither schedules nor preempts them). Before each step, every row that may sample inside a span gets its
companion's slots allocated and its tokens reserved out of the step's budget; a row whose companion cannot
be placed is held out of the step (or preempted, to free memory). After vLLM has scheduled the step, a
companion joins it exactly when its row samples in it, as a new request (its prefill) or a cached one (one
token). A row that vLLM preempts loses its companion, and gets a new one when it resumes.

With speculative Jacobi decoding a row verifies a window of drafts: its companion runs the same drafts in the
same step (the worker guides every window position and gives the companion the row's decisions), and vLLM
rolls both back alike.

Under async scheduling a row's newest token is unknown when the next step is scheduled. A companion is made
only from committed tokens, so a row that writes text and may open a span (interleaved replies) is scheduled
only when it has no step in flight: it notices its BOI before sampling the first token after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.core.kv_cache_manager import KVCacheBlocks
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import NewRequestData, SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from engine.shared.companions import COMPANION_KEY, PAIR_KEY
from engine.shared.request_options import IMAGE_ONLY, RequestOptions
from engine.shared.vocab import TokenLayout


@dataclass(slots=True)
class _Pair:
    """A guided row, and its companion for the span it is writing."""

    row: Request
    uncond_prompt: list[int]
    span_length: int  # tokens after BOI up to and including EOI
    span_only: bool  # the companion follows the open span alone (Lumina-mGPT)
    image_only: bool
    span_start: int = -1  # output index of the open span's BOI; -1: none open yet
    scanned: int = 0  # committed output tokens looked at for a BOI
    companion: Request | None = None
    made: int = 0  # companions made so far (their ids)
    sent: bool = False  # the worker knows the companion
    unsent_blocks: KVCacheBlocks | None = None  # allocated for a known companion, not yet told to the worker
    last_step: int = -1  # the step the companion last ran in
    joint: int = 0  # the row's output index that the companion samples with next

    def next_index(self) -> int:
        """The output index the row samples next, counting steps in flight."""
        return self.row.num_output_tokens + self.row.num_output_placeholders

    def settled(self) -> bool:
        """Whether every token of the row is known here (no step of it in flight)."""
        return self.row.num_in_flight_tokens == 0 and self.row.num_output_placeholders == 0

    def forget(self) -> Request | None:
        """The companion, no longer this pair's (the caller frees it if vLLM has not)."""
        companion, self.companion, self.sent, self.unsent_blocks = self.companion, None, False, None
        return companion

    def in_span(self, index: int) -> bool:
        """Whether output ``index`` follows an open span's BOI (up to its EOI): guided, so in lockstep."""
        return self.span_start >= 0 and self.span_start < index <= self.span_start + self.span_length


class GuidedPairs:
    """Mixin over vLLM's ``Scheduler``/``AsyncScheduler``: companions for guided rows (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._layout = TokenLayout.from_checkpoint(self.vllm_config.model_config.model)
        self._pairs: dict[str, _Pair] = {}
        self._companions: set[str] = set()  # ids of companions whose outputs may still be reported

    # --- requests in and out

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        params = request.sampling_params
        if params is None or request.request_id in self._pairs:
            return
        options = RequestOptions.from_sampling_params(params)
        if not options.guided:
            return
        span = self._layout.span
        grid = options.image_grid or (span.native_grid,) * 2
        try:
            span.check_grid(grid)
        except ValueError:
            grid = (span.native_grid,) * 2  # as the grammar falls back
        params.extra_args = {**(params.extra_args or {}), PAIR_KEY: request.request_id}
        pair = _Pair(request, list(options.uncond_prompt), span.span_length(grid), span.guided_from_boi,
                     options.mode == IMAGE_ONLY)
        if pair.image_only:
            pair.span_start, pair.scanned = 0, 1  # the grammar writes BOI first
        self._pairs[request.request_id] = pair

    def finish_requests(self, request_ids, finished_status: RequestStatus) -> list[Request]:
        finished = super().finish_requests(request_ids, finished_status)
        for request in finished:
            pair = self._pairs.pop(request.request_id, None)
            if pair is not None:
                self._drop_companion(pair)
        return finished

    # --- scheduling

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        held: list[Request] = []
        ready: list[tuple[_Pair, int]] = []
        for pair in list(self._pairs.values()):
            if pair.row.is_finished() or pair.row.request_id not in self.requests:
                self._pairs.pop(pair.row.request_id, None)
                self._drop_companion(pair)
                continue
            need = self._plan(pair)
            if need is not None and need < 0:
                held.append(pair.row)
            elif need is not None:
                ready.append((pair, need))
        # rows and companions share the worker's max_num_seqs slots: the last pairs wait (their rows too)
        held_set = set(held)
        running = sum(r.status == RequestStatus.RUNNING for r in self.running if r not in held_set)
        while ready and running + len(ready) > self.max_num_running_reqs:
            row = ready.pop()[0].row
            held.append(row)
            held_set.add(row)
            running -= row.status == RequestStatus.RUNNING
        held_running = [(i, r) for i, r in enumerate(self.running) if r in held_set]
        held_waiting = [r for r in held if r.status != RequestStatus.RUNNING]
        self.running = [r for r in self.running if r not in held_set]
        if held_waiting:
            self.waiting.remove_requests(held_waiting)
        reserved = sum(need for _, need in ready)
        budget = (self.max_num_scheduled_tokens, self.scheduler_config.max_num_batched_tokens,
                  self.max_num_running_reqs, self.max_num_active_reqs)
        self.max_num_scheduled_tokens -= reserved
        self.scheduler_config.max_num_batched_tokens -= reserved
        self.max_num_running_reqs -= len(ready)  # the worker's slots, and admission into running
        self.max_num_active_reqs -= len(ready)
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens, self.scheduler_config.max_num_batched_tokens, \
                self.max_num_running_reqs, self.max_num_active_reqs = budget
            for index, request in held_running:
                self.running.insert(index, request)
            if held_waiting:
                self.waiting.prepend_requests(held_waiting)
        for pair, _ in ready:
            row = pair.row
            if row.request_id in output.num_scheduled_tokens and not row.is_prefill_chunk:
                self._join(pair, output)
            elif row.status != RequestStatus.RUNNING:  # preempted by vLLM, or not admitted: free the memory
                self._drop_companion(pair)
        return output

    def _plan(self, pair: _Pair) -> int | None:
        """What the row needs this step: None (nothing: it may run alone), -1 (hold it out of the step), or
        the tokens its companion runs if the row samples in it (their slots allocated)."""
        row = pair.row
        if row.status not in (RequestStatus.RUNNING, RequestStatus.PREEMPTED, RequestStatus.WAITING):
            return None
        if pair.settled():
            self._scan(pair)
        index = pair.next_index()
        if not pair.in_span(index):
            self._drop_companion(pair)
            # A row whose newest token, still in flight, may be a BOI waits for it: the next may need guidance.
            return None if pair.settled() or pair.image_only or index == 0 else -1
        if pair.companion is not None and pair.joint != index:
            self._drop_companion(pair)  # out of step (a resumed row): start again from the row's history
        if pair.companion is None and not pair.settled():
            return -1
        if pair.companion is None and not self._make_companion(pair, index):
            self._give_way(pair)
            return -1
        companion = pair.companion
        need = companion.num_tokens + companion.num_output_placeholders - companion.num_computed_tokens
        need += len(row.spec_token_ids)  # the row's drafts, which the companion runs too (at most these)
        if pair.sent or row.spec_token_ids:
            blocks = self.kv_cache_manager.allocate_slots(companion, need,
                                                          num_lookahead_tokens=self.num_lookahead_tokens)
            if blocks is None:
                self._give_way(pair)
                return -1
            if pair.sent:
                pair.unsent_blocks = blocks if pair.unsent_blocks is None else pair.unsent_blocks + blocks
        return need

    def _give_way(self, pair: _Pair) -> None:
        """No memory for the companion: the row's goes too (preempted, it resumes later with a new companion),
        so that rows waiting for companions never hold the memory that companions need."""
        self._drop_companion(pair)
        row = pair.row
        if row.status == RequestStatus.RUNNING:
            self.running.remove(row)
            self._preempt_request(row, time.monotonic())

    def _scan(self, pair: _Pair) -> None:
        """Follow the row's committed tokens: a BOI opens a span (interleaved replies)."""
        tokens = pair.row.output_token_ids
        for i in range(pair.scanned, len(tokens)):
            if tokens[i] == self._layout.boi and not pair.in_span(i):
                pair.span_start = i
        pair.scanned = len(tokens)

    def _make_companion(self, pair: _Pair, index: int) -> bool:
        """A companion that samples with the row's output ``index``, its prefill allocated (prefix cache
        hits reused); False if memory is short."""
        row = pair.row
        start = pair.span_start if pair.span_only else 0
        tokens = pair.uncond_prompt + list(row.output_token_ids[start:index])
        params = SamplingParams(max_tokens=pair.span_length + 1, temperature=0.0, ignore_eos=True,
                                detokenize=False, extra_args={PAIR_KEY: row.request_id, COMPANION_KEY: True})
        companion = Request(f"{row.request_id}~uncond{pair.made}", tokens, params, None,
                            client_index=row.client_index, arrival_time=row.arrival_time, priority=row.priority,
                            cache_salt=row.cache_salt, block_hasher=row._block_hasher,
                            lora_request=row.lora_request)
        blocks, hits, _ = self.kv_cache_manager.get_computed_blocks(companion)
        if self.kv_cache_manager.allocate_slots(companion, companion.num_tokens - hits, num_new_computed_tokens=hits,
                                                new_computed_blocks=blocks,
                                                num_lookahead_tokens=self.num_lookahead_tokens) is None:
            self.kv_cache_manager.free(companion)
            return False
        self.kv_cache_manager.record_prefix_cache_stats(companion, hits)
        companion.num_computed_tokens = hits
        companion.status = RequestStatus.RUNNING
        self.requests[companion.request_id] = companion
        self._companions.add(companion.request_id)
        pair.forget()
        pair.companion, pair.made, pair.joint = companion, pair.made + 1, index
        return True

    def _join(self, pair: _Pair, output: SchedulerOutput) -> None:
        """Add the companion to a step its row samples in, as vLLM's own scheduling would have."""
        companion = pair.companion
        cid = companion.request_id
        drafts = output.scheduled_spec_decode_tokens.get(pair.row.request_id, [])
        if drafts:  # speculative Jacobi decoding (engine/worker/jacobi.py): the same window, guided together
            output.scheduled_spec_decode_tokens[cid] = list(drafts)
        count = companion.num_tokens + companion.num_output_placeholders - companion.num_computed_tokens + len(drafts)
        if not pair.sent:
            blocks = self.kv_cache_manager.get_blocks(cid).get_block_ids()
            output.scheduled_new_reqs.append(NewRequestData.from_request(
                companion, blocks, companion._all_token_ids if self.use_v2_model_runner else None))
        else:
            cached = output.scheduled_cached_reqs
            cached.req_ids.append(cid)
            if not self.use_v2_model_runner and pair.last_step != self.current_step - 1:
                cached.all_token_ids[cid] = companion.all_token_ids.copy()  # the worker set it aside: all again
            new_blocks = pair.unsent_blocks
            cached.new_block_ids.append(None if new_blocks is None else new_blocks.get_block_ids(allow_none=True))
            cached.num_computed_tokens.append(companion.num_computed_tokens)
            cached.num_output_tokens.append(companion.num_output_tokens + companion.num_output_placeholders)
        if not self.use_v2_model_runner:
            self.prev_step_scheduled_req_ids.add(cid)
        output.num_scheduled_tokens[cid] = count
        output.total_num_scheduled_tokens += count
        companion.num_computed_tokens += count
        companion.num_in_flight_tokens += count
        companion.is_prefill_chunk = False
        if self.defer_block_free:
            companion.last_sched_seq = self.sched_step_seq
        if isinstance(self, AsyncScheduler):
            companion.num_output_placeholders += self.num_sampled_tokens_per_step
        pair.sent, pair.unsent_blocks, pair.last_step = True, None, self.current_step
        pair.joint += 1 + len(drafts)  # less the drafts not kept, once known (update_from_output)

    def _drop_companion(self, pair: _Pair) -> None:
        companion = pair.forget()
        if companion is not None and companion.request_id in self.requests:
            super().finish_requests(companion.request_id, RequestStatus.FINISHED_ABORTED)

    # --- outputs

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> dict[int, EngineCoreOutputs]:
        companions = self._companions
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        drafts, sampled = scheduler_output.scheduled_spec_decode_tokens, model_runner_output.sampled_token_ids
        for pair in self._pairs.values():  # a companion keeps what its row keeps of their window
            cid = None if pair.companion is None else pair.companion.request_id
            if cid in drafts:
                index = model_runner_output.req_id_to_index.get(cid)
                kept = len(sampled[index]) if index is not None and sampled else 0
                pair.joint -= len(drafts[cid]) + 1 - kept
        for engine_outputs in outputs.values():  # companions are this scheduler's alone
            engine_outputs.outputs = [o for o in engine_outputs.outputs if o.request_id not in companions]
            if engine_outputs.finished_requests:
                engine_outputs.finished_requests -= companions
        for pair in self._pairs.values():
            if pair.companion is not None and pair.companion.is_finished():
                pair.forget()
        self._companions = {c for c in companions if c in self.requests}
        return outputs


class GuidedScheduler(GuidedPairs, Scheduler):
    """vLLM's scheduler with guidance companions (synchronous scheduling)."""


class AsyncGuidedScheduler(GuidedPairs, AsyncScheduler):
    """vLLM's async scheduler (its default) with guidance companions."""


def guided_scheduler(*args, vllm_config: VllmConfig, **kwargs) -> GuidedPairs:
    """The scheduler for ``vllm_config`` (``engine.shared.companions.SCHEDULER`` names this): a function, since vLLM
    decides async scheduling after the config is built."""
    cls = AsyncGuidedScheduler if vllm_config.scheduler_config.async_scheduling else GuidedScheduler
    return cls(*args, vllm_config=vllm_config, **kwargs)

