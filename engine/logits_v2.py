"""The image-span grammar behind Model Runner V2's logits-processor interface (opt-in on GPUs:
``VLLM_USE_V2_MODEL_RUNNER=1``).

Import-light, as vLLM's frontend imports the class to validate request params: the V2 interface
module and our torch-only grammar, nothing from the runner (the model is looked up in the worker, at
the first step). Committed tokens live on the device (``req_states.all_token_ids`` up to ``total_len``);
one small device->host copy per step brings the newest token of each request that may write images
(none when a batch is all text-only).

V2 runs custom processors after logit bias, penalties and bad words (V1: after bias and bad words,
before penalties). Image codes are therefore sampled from the model's own logits of the step
(``ChameleonForConditionalGeneration.raw_logits``) plus the request's logit bias, with every token
that an earlier stage forbade kept forbidden: exactly what V1 samples them from, so penalties act on
text only, on both runners.
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

from engine.span_grammar import TEXT_ONLY, SpanGrammar, SpanParams
from engine.vocab import TokenLayout

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams


class ChameleonSpanLogitsProcessorV2(LogitsProcessor):
    """Span grammar and image sampling for Model Runner V2; rows map to slots by ``ctx.idx_mapping_np``."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        if SpanParams.from_sampling_params(sampling_params).guided:
            # engine/guidance.py needs each row's committed history and a drop on finish; wired for V1 only.
            raise ValueError("cfg_scale is not supported on vLLM's Model Runner V2 yet; "
                             "set VLLM_USE_V2_MODEL_RUNNER=0 to serve guided requests")

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        if vllm_config.speculative_config is not None:
            # Draft rows would need the draft tokens folded into the span state; not done.
            raise ValueError("the image-span logits processor does not support speculative decoding")
        layout = TokenLayout.from_checkpoint(vllm_config.model_config.model)
        self.req_states = req_states
        self.grammar = SpanGrammar(layout, req_states.max_num_reqs, req_states.device)
        self._unplaced = np.zeros(req_states.max_num_reqs, dtype=bool)  # history not read yet
        # per slot: (token ids, biases) of the request's logit_bias, on the device; None without one
        self._bias: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * req_states.max_num_reqs

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        params = SpanParams.from_sampling_params(sampling_params)
        self.grammar.add(req_idx, params)  # placed from the device history at its first apply
        self._unplaced[req_idx] = params.mode != TEXT_ONLY
        bias = sampling_params.logit_bias if params.mode != TEXT_ONLY else None
        self._bias[req_idx] = None if not bias else (
            torch.tensor(list(bias), dtype=torch.long).to(self.req_states.device),
            torch.tensor(list(bias.values()), dtype=torch.float32).to(self.req_states.device))
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        slots = np.asarray(ctx.idx_mapping_np, dtype=np.int64)
        if logits.shape[0] != len(slots):  # several rows per request; not expected without speculation
            slots = ctx.expanded_idx_mapping.cpu().numpy().astype(np.int64)
        tracked = self.grammar.tracked(slots)
        if not len(tracked):
            return self.grammar.apply(logits, slots)
        self._catch_up(tracked)
        codes = self._code_logits(logits, slots) if self.grammar.sampling_code(slots).any() else None
        return self.grammar.apply(logits, slots, codes)

    def _code_logits(self, logits: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
        """What V1 samples image codes from: the model's logits plus each request's logit bias, and -inf
        wherever an earlier stage put it in ``logits`` (bad words, min_tokens, a grammar); not penalties."""
        from engine.chameleon import live_model

        raw = live_model().raw_logits
        if raw is None or raw.shape != logits.shape:  # not this step's rows: nothing better than V2's own
            return logits
        x = raw.to(torch.float32, copy=True)  # raw is vLLM's too (its raw logprobs): never written to
        for i, slot in enumerate(slots):
            if self._bias[slot] is not None:
                ids, values = self._bias[slot]
                x[i].index_add_(0, ids, values)
        return x.masked_fill_(logits == float("-inf"), float("-inf"))

    def _catch_up(self, slots: np.ndarray) -> None:
        """Advance by the one token committed since last step, or re-place from history otherwise."""
        rs, grammar = self.req_states, self.grammar
        idx = torch.from_numpy(slots).to(rs.device)
        lens = rs.total_len.gpu[idx].long()
        last = rs.all_token_ids.gpu[idx, (lens - 1).clamp(min=0)].long()
        lens_np, last_np = torch.stack([lens, last]).cpu().numpy()  # the one device->host copy
        num_output = lens_np - rs.prompt_len.np[slots]
        step = (num_output == grammar.num_output[slots] + 1) & ~self._unplaced[slots]
        grammar.advance(slots[step], last_np[step])
        for slot, length, n_out in zip(slots[~step], lens_np[~step], num_output[~step]):
            if self._unplaced[slot] or n_out != grammar.num_output[slot]:  # entry, resumption
                start = max(0, int(length) - grammar.tail_length(int(slot)))
                grammar.resync(slot, rs.all_token_ids.gpu[slot, start:length].tolist(), int(n_out))
                self._unplaced[slot] = False
