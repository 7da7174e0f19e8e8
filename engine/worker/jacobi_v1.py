"""Speculative Jacobi decoding (``engine/worker/jacobi.py``) on vLLM's V1 model runner: a ``custom_class``
proposer and a rejection sampler that lets our span processor decide the image rows' windows.

vLLM 0.32's V1 speculative path: after each step the proposer's ``propose`` returns draft tokens per batch row
(host lists) that the scheduler schedules next (trimmed to its token budget) and the runner feeds to the model
after the row's own token; the rejection sampler then verifies them against the step's logits and the scheduler
rolls back the KV of what it rejected. Its custom logits processors run on each request's bonus row only, and
it verifies with its own p against a q the proposer cannot give. So :class:`JacobiRejectionSampler` has the
span processor decide every draft row of an image row (:meth:`JacobiWindows.verify`), samples each request's
one row through vLLM's sampler (an image row's bonus row, drawn by the span processor at the position after
its drafts; a text row's only row), and :meth:`Decisions.settle` writes what each window keeps.

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
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample.logits_processor import BUILTIN_LOGITS_PROCESSORS, LogitsProcessors, _load_custom_logitsprocs
from vllm.v1.sample.rejection_sampler import RejectionSampler

from engine.worker import jacobi
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1
from engine.worker.transfers import to_device

if TYPE_CHECKING:
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
    """In the place of vLLM's rejection sampler: the image rows' windows decided by the span processor, every
    request's one sampled row through vLLM's sampler."""

    def forward(self, metadata: SpecDecodeMetadata, draft_probs: torch.Tensor | None, logits: torch.Tensor,
                sampling_metadata: SamplingMetadata) -> SamplerOutput:
        """Every request samples one row through vLLM's sampler (our span processor among its processors): an
        image row with decided drafts its bonus row, written after what it keeps of its window; a row without
        drafts its only row; a row with drafts nobody decided (vLLM pads some with -1) its first row, its drafts
        all rejected, which is exact. vLLM's own verification is not run: on a CPU its kernels expand per-request
        settings into scratch memory they never fill (vLLM 0.32), and only image rows draft here. Logprobs are
        the model's (vLLM's default "raw" mode), each place of the output from its own row. A step without drafts
        (vLLM takes this path for every step once speculative decoding is configured) is vLLM's sampler alone."""
        if not metadata.max_spec_len:  # one row per request: what the sampler writes is the whole output
            return self.sampler(logits=logits, sampling_metadata=sampling_metadata)
        num_drafts = np.asarray(metadata.num_draft_tokens, dtype=np.int64)
        windows = jacobi.active()
        decided = None
        if windows is not None:
            windows.catch_up(len(num_drafts))
            decided = windows.verify(logits, num_drafts, metadata.draft_token_ids)
        first_row = jacobi.first_rows(num_drafts)
        ahead = np.zeros_like(num_drafts) if decided is None else decided.ahead
        sampled = self.sampler(logits=logits.index_select(0, to_device(first_row + ahead, logits.device)),
                               sampling_metadata=replace(sampling_metadata, max_num_logprobs=None))
        tokens = sampled.sampled_token_ids
        output = torch.full((len(num_drafts), metadata.max_spec_len + 1), -1, dtype=tokens.dtype,
                            device=tokens.device)
        output[:, :1] = tokens
        if decided is not None:
            decided.settle(output)
        logprobs = None
        if sampling_metadata.max_num_logprobs is not None:  # each place of the output from its own row's logits
            place = np.minimum(first_row[:, None] + np.arange(output.shape[1]), (first_row + num_drafts)[:, None])
            rows = logits.index_select(0, to_device(place.flatten(), logits.device))
            logprobs = self.sampler.gather_logprobs(self.sampler.compute_logprobs(rows),
                                                    sampling_metadata.max_num_logprobs,
                                                    output.flatten().clamp(min=0).long())
        return SamplerOutput(sampled_token_ids=output, logprobs_tensors=logprobs)


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
