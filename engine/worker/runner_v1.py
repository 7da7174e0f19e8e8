"""The image-span grammar behind vLLM's V1-runner logits-processor interface (the runner of the CPU build).

State follows each request's live output-token list (``BatchUpdate.added`` hands a reference); it is
advanced in ``catch_up`` (from ``apply``, and from speculative Jacobi decoding's verification and proposal,
``engine/worker/jacobi_v1.py``), not ``update_state``, because under async scheduling the newest token is only
a placeholder (-1) until just before the processors run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from engine.shared.companions import pair_mark
from engine.shared.families import for_architectures
from engine.shared.jacobi import MAX_WINDOW, PROPOSER, budget_of
from engine.shared.request_options import RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.guidance import Guidance
from engine.worker.jacobi import JacobiWindows
from engine.worker.span_grammar import SpanGrammar
from engine.worker.transfers import to_device

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


def _committed(output: Sequence[int]) -> int:
    """Output tokens that are real, not trailing async placeholders."""
    n = len(output)
    while n and output[n - 1] == -1:
        n -= 1
    return n


def _biased(params: SamplingParams) -> bool:
    """Whether vLLM reshapes the request's logits before ours (logit_bias, min_p, allowed or bad tokens): its
    bonus rows see that, its draft rows would not, so such a request writes its codes one a step."""
    return bool(params.logit_bias or params.min_p or params.allowed_token_ids or params.bad_words)


class ChameleonSpanLogitsProcessorV1(LogitsProcessor):
    """Span grammar and image sampling for the V1 model runner; batch row i is slot i."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        RequestOptions.from_sampling_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        spec = getattr(vllm_config, "speculative_config", None)
        if spec is not None and (spec.method, spec.model) != ("custom_class", PROPOSER):
            # V1's rejection sampler runs custom processors on one row per request, not on the draft positions:
            # other drafts inside an image span would escape the grammar.
            raise ValueError("the image-span logits processor supports no speculative decoding but its own "
                             f"(speculative Jacobi decoding of image spans, {PROPOSER})")
        max_slots = vllm_config.scheduler_config.max_num_seqs
        model_config = vllm_config.model_config
        layout = TokenLayout.from_checkpoint(model_config.model)
        self.grammar = SpanGrammar(layout, max_slots, device)
        self.guidance = Guidance(max_slots)
        self.jacobi: JacobiWindows | None = None
        if spec is not None:
            family = for_architectures(model_config.architectures or [])
            self.jacobi = JacobiWindows(self.grammar, self.guidance, max_slots, spec.num_speculative_tokens + 1,
                                        budget_of(vllm_config), family.sampling.jacobi_window, self.catch_up)
        self._prompts: list[Sequence[int]] = [() for _ in range(max_slots)]
        self._outputs: list[Sequence[int]] = [() for _ in range(max_slots)]
        self._slots = np.arange(max_slots, dtype=np.int64)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self.grammar.remove(slot)
            self.guidance.remove(slot)
            if self.jacobi:
                self.jacobi.remove(slot)
            self._prompts[slot], self._outputs[slot] = (), ()
        for slot, params, prompt, output in batch_update.added:
            self._prompts[slot], self._outputs[slot] = prompt or (), output
            n = _committed(output)
            options = RequestOptions.from_sampling_params(params)
            self.grammar.add(slot, options)
            self.grammar.resync(slot, self._tail(slot, n), n)
            self.guidance.add(slot, options, params.extra_args)
            if self.jacobi:
                self.jacobi.add(slot, options, drafts=not pair_mark(params.extra_args)[1] and not _biased(params))
        for src, dst, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            self.grammar.move(src, dst, swap)
            self.guidance.move(src, dst, swap)
            if self.jacobi:
                self.jacobi.move(src, dst, swap)
            for lists in (self._prompts, self._outputs):
                lists[dst], lists[src] = lists[src], (lists[dst] if swap else ())

    def catch_up(self, num_slots: int) -> None:
        """Account the tokens committed since the last call, for the batch's first ``num_slots`` slots: a few per
        slot are advanced over (one without drafts, a window's with), more (a resumption) placed anew."""
        stepped: list[int] = []
        new: list[Sequence[int]] = []
        for slot in self.grammar.tracked(self._slots[:num_slots]):  # only requests that may write images
            output, seen = self._outputs[slot], int(self.grammar.state.num_output[slot])
            n = _committed(output)
            if seen < n <= seen + MAX_WINDOW:
                stepped.append(slot)
                new.append(output[seen:n])
            elif n != seen:
                self.grammar.resync(slot, self._tail(slot, n), n)
        for k in range(max(map(len, new), default=0)):  # the k-th new token of each slot that has one
            has = [i for i, tokens in enumerate(new) if len(tokens) > k]
            self.grammar.advance(np.array([stepped[i] for i in has], dtype=np.int64),
                                 np.array([new[i][k] for i in has], dtype=np.int64))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        slots = self._slots[: logits.shape[0]]
        self.catch_up(len(slots))
        ahead = np.zeros(len(slots), dtype=np.int64)  # one row per request: its bonus row, past this step's drafts
        if self.jacobi is not None:
            ahead = self.jacobi.ahead[slots].copy()
            self.jacobi.ahead[:] = 0
        rows, companions = self.guidance.pairs(slots)
        if not len(rows):
            return self.grammar.apply(logits, slots, ahead)
        rows_t, companions_t = to_device(rows, logits.device), to_device(companions, logits.device)
        guided = self.guidance.guided(logits.index_select(0, rows_t), logits.index_select(0, companions_t),
                                      slots[rows], self.grammar.sampling_code(slots[rows], ahead[rows]))
        logits.index_copy_(0, rows_t, guided)
        return self.guidance.mirror(self.grammar.apply(logits, slots, ahead), rows_t, companions_t)

    def _tail(self, slot: int, n: int) -> list[int]:
        """The last ``tail_length`` tokens of prompt + the first ``n`` output tokens."""
        want = self.grammar.tail_length(slot)
        out = list(self._outputs[slot][max(0, n - want) : n])
        need = want - len(out)
        return [*(self._prompts[slot][-need:] if need else ()), *out]
