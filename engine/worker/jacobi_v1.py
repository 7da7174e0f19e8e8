"""Speculative Jacobi decoding (``engine/worker/jacobi.py``) on vLLM's V1 model runner: a ``custom_class``
proposer and a rejection sampler that lets our span processor decide the image rows' windows.

vLLM 0.32's V1 speculative path: after each step the proposer's ``propose`` returns draft tokens per batch row
(host lists) that the scheduler schedules next (trimmed to its token budget) and the runner feeds to the model
after the row's own token; the rejection sampler then verifies them against the step's logits and the scheduler
rolls back the KV of what it rejected. Its custom logits processors run on each request's bonus row only, and
it verifies with its own p against a q the proposer cannot give. So :class:`JacobiRejectionSampler` first has
the span processor decide every draft row of an image row (:meth:`JacobiWindows.verify`) and writes each
decision as a one-hot row: vLLM's greedy path (argmax) and random path (p(x) of a one-hot p) then both keep
exactly the drafts we kept, and :meth:`Decisions.settle` writes our token at the first we did not; the bonus
row is drawn by the span processor as any row, at the position after the drafts. Text rows pass
through untouched.

The runner knows neither, and under speculative decoding vLLM refuses custom logits processors (they would
see bonus rows only; ours decides the draft rows through the rejection sampler instead). The runner builds its
proposer first, then its rejection sampler and its batch's processors from the names ``RejectionSampler`` and
``build_logitsprocs`` in ``gpu_model_runner``'s module (the CPU runner inherits that constructor). So the
proposer, when built, puts :class:`JacobiRejectionSampler` and :func:`_logitsprocs` under those names, in the
worker processes of engines with SJD only; both find the span processor's windows through
:func:`engine.worker.jacobi.active`. None of this is a public interface of vLLM: tests pin it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BUILTIN_LOGITS_PROCESSORS, LogitsProcessors, _load_custom_logitsprocs
from vllm.v1.sample.rejection_sampler import RejectionSampler

from engine.worker import jacobi
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

if TYPE_CHECKING:
    from vllm.v1.outputs import SamplerOutput
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

def _logitsprocs(vllm_config: Any, device: torch.device, is_pin_memory: bool, is_pooling_model: bool,
                 custom_logitsprocs: Sequence[Any] = ()) -> LogitsProcessors:
    """The batch's logits processors as without speculative decoding (vLLM's built-in ones and ours): only
    image rows draft, and their drafts are decided by the span processor; text rows sample as ever."""
    custom = _load_custom_logitsprocs(custom_logitsprocs)
    if not all(issubclass(cls, ChameleonSpanLogitsProcessorV1) for cls in custom):
        raise ValueError("speculative Jacobi decoding takes no logits processor but the image-span one")
    return LogitsProcessors(cls(vllm_config, device, is_pin_memory)
                            for cls in (*BUILTIN_LOGITS_PROCESSORS, *custom))


class JacobiRejectionSampler(RejectionSampler):
    """vLLM's rejection sampler, with the image rows' draft rows decided by the span processor first."""

    def forward(self, metadata: SpecDecodeMetadata, draft_probs: torch.Tensor | None, logits: torch.Tensor,
                sampling_metadata: SamplingMetadata) -> SamplerOutput:
        windows = jacobi.active()
        if windows is not None:
            windows.catch_up(len(metadata.num_draft_tokens))
            decided = windows.verify(logits, np.asarray(metadata.num_draft_tokens, dtype=np.int64),
                                              metadata.draft_token_ids)
            if decided is not None:
                logits.index_fill_(0, decided.logit_rows, float("-inf"))
                logits.index_put_((decided.logit_rows, decided.tokens),
                                  torch.zeros((), dtype=logits.dtype, device=logits.device))
                out = super().forward(metadata, draft_probs, logits, sampling_metadata)
                decided.settle(out.sampled_token_ids)
                return out
        return super().forward(metadata, draft_probs, logits, sampling_metadata)


class JacobiProposer:
    """vLLM's ``custom_class`` proposer: the image rows' next windows, from the span processor."""

    def __init__(self, vllm_config: Any) -> None:
        from vllm.v1.worker import gpu_model_runner

        self.vllm_config = vllm_config
        # the runner builds them next
        gpu_model_runner.RejectionSampler = JacobiRejectionSampler
        gpu_model_runner.build_logitsprocs = _logitsprocs

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """No model of its own: drafts come from the target model's last step."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray, token_ids_cpu: np.ndarray,
                slot_mappings: Sequence[Any] | None = None) -> list[list[int]]:
        windows = jacobi.active()
        if windows is None:
            return [[] for _ in sampled_token_ids]
        windows.catch_up(len(sampled_token_ids))
        return windows.propose(len(sampled_token_ids))
