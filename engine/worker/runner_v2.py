"""The image-span grammar behind Model Runner V2's logits-processor interface (opt-in on GPUs:
``VLLM_USE_V2_MODEL_RUNNER=1``).

Import-light, as vLLM's frontend imports the class to validate request params: the V2 interface
module, our torch-only grammar and guidance, nothing from the runner (the model is looked up in the
worker, at the first step). Committed tokens live on the device (``req_states.all_token_ids`` up to
``total_len``) and are never read back: each step reads every image-capable row's span position from
its history on the device, and the grammar decides by masks there (``SpanGrammar.apply_on_device``), so
no step waits for the one before it. What the host knows it uses: each row's committed length
(``ctx.seq_lens_upper_bound_np``, exact without speculative decoding).

V2 runs custom processors after logit bias, penalties and bad words (V1: after bias and bad words,
before penalties). Image codes are therefore sampled from the model's own logits of the step
(``ChameleonForConditionalGeneration.raw_logits``) plus the request's logit bias, with every token
that an earlier stage forbade kept forbidden: exactly what V1 samples them from, so penalties act on
text only, on both runners. A guided row's unconditional companion (``engine/worker/guidance.py``) is guided
from the companion's raw logits, as V1 guides from the companion's unbiased ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from engine.shared.request_options import TEXT_ONLY, RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.guidance import Guidance
from engine.worker.live import live_model
from engine.worker.span_grammar import SpanGrammar
from engine.worker.transfers import to_device

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams


class ChameleonSpanLogitsProcessorV2(LogitsProcessor):
    """Span grammar and image sampling for Model Runner V2; rows map to slots by ``ctx.idx_mapping_np``."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        RequestOptions.from_sampling_params(sampling_params)

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        if vllm_config.speculative_config is not None:
            # Draft rows would need the draft tokens folded into the span state; not done.
            raise ValueError("the image-span logits processor does not support speculative decoding")
        layout = TokenLayout.from_checkpoint(vllm_config.model_config.model)
        self.req_states = req_states
        self.grammar = SpanGrammar(layout, req_states.max_num_reqs, req_states.device)
        self.guidance = Guidance(req_states.max_num_reqs)
        # per slot, on the device: the request's logit_bias as (token id, bias) columns, padded with (0, 0.0)
        self._bias_ids = torch.zeros(req_states.max_num_reqs, 0, dtype=torch.long, device=req_states.device)
        self._bias_values = torch.zeros(req_states.max_num_reqs, 0, device=req_states.device)
        self._has_bias = np.zeros(req_states.max_num_reqs, dtype=bool)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        params = RequestOptions.from_sampling_params(sampling_params)
        self.grammar.add(req_idx, params)  # placed from the device history at every step (_positions)
        self.guidance.add(req_idx, params, sampling_params.extra_args)
        self._set_bias(req_idx, (sampling_params.logit_bias or {}) if params.mode != TEXT_ONLY else {})
        return True

    def _set_bias(self, slot: int, bias: dict[int, float]) -> None:
        """``slot``'s row of the bias table, which widens to the longest logit_bias seen: one scatter adds
        every row's bias, however many rows have one."""
        grow = len(bias) - self._bias_ids.shape[1]
        if grow > 0:
            self._bias_ids = torch.nn.functional.pad(self._bias_ids, (0, grow))
            self._bias_values = torch.nn.functional.pad(self._bias_values, (0, grow))
        self._has_bias[slot] = bool(bias)
        dev = self.req_states.device
        self._bias_ids[slot].zero_()  # the scalar an argument of the fill, not a host value the device copies in
        self._bias_values[slot].zero_()
        self._bias_ids[slot, :len(bias)] = to_device(np.fromiter(bias, dtype=np.int64, count=len(bias)), dev)
        self._bias_values[slot, :len(bias)] = to_device(np.fromiter(bias.values(), dtype=np.float32,
                                                                    count=len(bias)), dev)

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        slots = np.asarray(ctx.idx_mapping_np, dtype=np.int64)
        if logits.shape[0] != len(slots):  # several rows per request; not expected without speculation
            slots = ctx.expanded_idx_mapping.cpu().numpy().astype(np.int64)
        rows = np.flatnonzero(self.grammar.state.mode[slots] != TEXT_ONLY)
        if not len(rows):  # text only: no position to read (companions are text-only rows: no pair either)
            none = torch.empty(0, dtype=torch.long, device=logits.device)
            return self.grammar.apply_on_device(logits, slots, rows, none, none)
        placed = slots[rows]
        pos, num_output = self._positions(placed)
        codes = self._code_logits(logits, slots, rows)
        guided, companions = self.guidance.pairs(slots)
        if not len(guided):
            return self.grammar.apply_on_device(logits, slots, rows, pos, num_output, codes)
        guided_t, companions_t = to_device(guided, logits.device), to_device(companions, logits.device)
        at_t = to_device(np.searchsorted(rows, guided), logits.device)  # the guided rows among ``rows``
        sampling = self.grammar.samples_code_on_device(placed, pos).index_select(0, at_t)
        uncond = self._raw(logits).index_select(0, companions_t)
        codes.index_copy_(0, at_t, self.guidance.guided(codes.index_select(0, at_t), uncond, slots[guided], sampling))
        logits = self.grammar.apply_on_device(logits, slots, rows, pos, num_output, codes)
        return self.guidance.mirror(logits, guided_t, companions_t)

    def _positions(self, slots: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per slot, on the device: tokens written since an unclosed BOI (-1 outside a span), read from the last
        :meth:`SpanGrammar.tail_length` tokens of its history (``engine/worker/span_rules.py``), and
        its output tokens so far. Nothing is carried from step to step: entry, preemption and resumption
        need no bookkeeping."""
        rs, grammar = self.req_states, self.grammar
        dev = rs.device
        idx = to_device(slots, dev)
        total = rs.total_len.gpu[idx].long()
        width = max(grammar.tail_length(int(slot)) for slot in slots)
        at = total.unsqueeze(1) + torch.arange(-width, 0, device=dev)  # the window's positions, oldest first
        tokens = rs.all_token_ids.gpu[idx.unsqueeze(1), at.clamp(min=0)].long()
        num_output = total - to_device(rs.prompt_len.np[slots].astype(np.int64), dev)
        return grammar.rules.positions(slots, tokens, at), num_output

    def _code_logits(self, logits: torch.Tensor, slots: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """For ``rows``, what V1 samples image codes from: the model's logits plus each request's logit bias,
        and -inf wherever an earlier stage put it in ``logits`` (bad words, min_tokens, a grammar); not
        penalties."""
        rows_t = to_device(rows, logits.device)
        processed = logits.index_select(0, rows_t)
        x = self._raw(logits).index_select(0, rows_t).float()  # a copy: raw is vLLM's too (its raw logprobs)
        if self._has_bias[slots[rows]].any():
            placed = to_device(slots[rows], logits.device)
            x.scatter_add_(1, self._bias_ids[placed], self._bias_values[placed])
        return x.masked_fill_(processed == float("-inf"), float("-inf"))

    @staticmethod
    def _raw(logits: torch.Tensor) -> torch.Tensor:
        """The model's own logits of this step (``logits`` itself where they are not this step's rows)."""
        raw = live_model().raw_logits
        return logits if raw is None or raw.shape != logits.shape else raw
