"""The image-span grammar behind vLLM's V1-runner logits-processor interface (the runner of the CPU build).

State follows each request's live output-token list (``BatchUpdate.added`` hands a reference); it is
advanced in ``apply``, not ``update_state``, because under async scheduling the newest token is only a
placeholder (-1) until just before the processors run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from engine.shared.request_options import RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.guidance import Guidance
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


class ChameleonSpanLogitsProcessorV1(LogitsProcessor):
    """Span grammar and image sampling for the V1 model runner; batch row i is slot i."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        RequestOptions.from_sampling_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            # V1's rejection sampler runs custom processors on one row per request, not on the draft positions:
            # drafts inside an image span would escape the grammar.
            raise ValueError("the image-span logits processor does not support speculative decoding")
        max_slots = vllm_config.scheduler_config.max_num_seqs
        layout = TokenLayout.from_checkpoint(vllm_config.model_config.model)
        self.grammar = SpanGrammar(layout, max_slots, device)
        self.guidance = Guidance(max_slots)
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
            self._prompts[slot], self._outputs[slot] = (), ()
        for slot, params, prompt, output in batch_update.added:
            self._prompts[slot], self._outputs[slot] = prompt or (), output
            n = _committed(output)
            options = RequestOptions.from_sampling_params(params)
            self.grammar.add(slot, options)
            self.grammar.resync(slot, self._tail(slot, n), n)
            self.guidance.add(slot, options, params.extra_args)
        for src, dst, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            self.grammar.move(src, dst, swap)
            self.guidance.move(src, dst, swap)
            for lists in (self._prompts, self._outputs):
                lists[dst], lists[src] = lists[src], (lists[dst] if swap else ())

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        slots = self._slots[: logits.shape[0]]
        stepped: list[int] = []
        tokens: list[int] = []
        for slot in self.grammar.tracked(slots):  # only requests that may write images
            output, seen = self._outputs[slot], int(self.grammar.state.num_output[slot])
            n = _committed(output)
            if n == seen + 1:
                stepped.append(slot)
                tokens.append(output[n - 1])
            elif n != seen:
                self.grammar.resync(slot, self._tail(slot, n), n)
        self.grammar.advance(np.array(stepped, dtype=np.int64), np.array(tokens, dtype=np.int64))
        rows, companions = self.guidance.pairs(slots)
        if not len(rows):
            return self.grammar.apply(logits, slots)
        rows_t, companions_t = to_device(rows, logits.device), to_device(companions, logits.device)
        guided = self.guidance.guided(logits.index_select(0, rows_t), logits.index_select(0, companions_t),
                                      slots[rows], self.grammar.sampling_code(slots[rows]))
        logits.index_copy_(0, rows_t, guided)
        return self.guidance.mirror(self.grammar.apply(logits, slots), rows_t, companions_t)

    def _tail(self, slot: int, n: int) -> list[int]:
        """The last ``tail_length`` tokens of prompt + the first ``n`` output tokens."""
        want = self.grammar.tail_length(slot)
        out = list(self._outputs[slot][max(0, n - want) : n])
        need = want - len(out)
        return [*(self._prompts[slot][-need:] if need else ()), *out]
