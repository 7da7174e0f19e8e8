"""vLLM 0.32's Model Runner V2 sampling path on CPU tensors, for tests of our V2 logits processor.

The runner's own objects run as they are: ``RequestState`` (request slots, staged writes), the
``Sampler`` with its processor list in vLLM's order (logit bias, penalties, bad words, then custom
processors) and ``LogitsContext``. Only what needs Triton, which has no CPU backend, is replaced by a
torch transcription of the kernel's arithmetic (``install``): the staged-write flush, the penalties'
bincount and kernel, and the logit-bias kernel (bias and allowed ids; min_tokens is not transcribed).
Pinned (UVA) buffers do not exist on CPU either: vLLM's own non-UVA fallback is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu import buffer_utils
from vllm.v1.worker.gpu.sample import logit_bias, penalties
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcRequestState
from vllm.v1.worker.gpu.sample.sampler import Sampler
from vllm.v1.worker.gpu.states import RequestState

import engine.worker.live
from engine.worker.runner_v2 import ChameleonSpanLogitsProcessorV2


def _apply_write(self: buffer_utils.StagedWriteTensor) -> None:
    """``StagedWriteTensor.apply_write``: each staged run of values written at (row, start)."""
    flat = self.gpu.view(-1)
    lo = 0
    for row, start, hi in zip(self._staged_write_indices, self._staged_write_starts, self._staged_write_cu_lens,
                              strict=True):
        base = row * self.gpu.stride(0) + start
        flat[base:base + hi - lo] = torch.tensor(self._staged_write_contents[lo:hi], dtype=self.dtype)
        lo = hi
    self.clear_staged_writes()


def _bincount(idx_mapping, all_token_ids, prompt_len, prefill_len, prompt_bin_mask, output_bin_counts,
              max_prefill_len) -> None:
    """``penalties.bincount``: a bit per prompt token (packed 32 to an int32), a count per output token."""
    vocab = output_bin_counts.shape[1]
    for slot in idx_mapping.tolist():
        tokens = all_token_ids[slot, : int(prefill_len[slot])].long()
        n_prompt = int(prompt_len[slot])
        seen = torch.zeros(prompt_bin_mask.shape[1] * 32, dtype=torch.int64)
        seen[tokens[:n_prompt]] = 1
        words = (seen.view(-1, 32) << torch.arange(32)).sum(dim=1)
        prompt_bin_mask[slot] = words.to(torch.int32)  # bit 31 wraps, as in the kernel's int32
        output_bin_counts[slot] = torch.bincount(tokens[n_prompt:], minlength=vocab)[:vocab].to(torch.int32)


def _apply_penalties(logits, expanded_idx_mapping, token_ids, expanded_local_pos, repetition, frequency, presence,
                     prompt_bin_mask, output_bin_counts) -> None:
    """``penalties.apply_penalties`` for one logits row per request (no drafts)."""
    vocab = logits.shape[1]
    for row, slot in enumerate(expanded_idx_mapping.tolist()):
        rep, freq, pres = float(repetition[slot]), float(frequency[slot]), float(presence[slot])
        if rep == 1.0 and freq == 0.0 and pres == 0.0:
            continue
        counts = output_bin_counts[slot].float()
        in_output = counts > 0
        in_prompt = ((prompt_bin_mask[slot].long().unsqueeze(1) >> torch.arange(32)) & 1).flatten()[:vocab] > 0
        x = logits[row]
        if rep != 1.0:
            scale = torch.where(in_prompt | in_output, rep, 1.0)
            x *= torch.where(x > 0, 1.0 / scale, scale)
        x -= freq * counts
        x -= pres * in_output.float()


def _apply_logit_bias(logits, expanded_idx_mapping, pos, num_allowed, allowed, num_bias, bias_ids, bias, min_lens,
                      num_stop, restore, stop_ids, enable_restore) -> None:
    """``logit_bias.apply_logit_bias``: allowed ids, then the bias (min_tokens is not transcribed)."""
    for row, slot in enumerate(expanded_idx_mapping.tolist()):
        if int(num_stop[slot]):
            raise NotImplementedError("min_tokens is not transcribed in tests/v2_runner.py")
        if n := int(num_allowed[slot]):
            keep = logits[row, allowed[slot, :n].long()].clone()
            logits[row] = float("-inf")
            logits[row, allowed[slot, :n].long()] = keep
        if n := int(num_bias[slot]):
            logits[row, bias_ids[slot, :n].long()] += bias[slot, :n]


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let vLLM's V2 sampling objects run on CPU tensors (see the module docstring)."""
    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)
    monkeypatch.setattr(buffer_utils.StagedWriteTensor, "apply_write", _apply_write)
    monkeypatch.setattr(penalties, "bincount", _bincount)
    monkeypatch.setattr(penalties, "apply_penalties", _apply_penalties)
    monkeypatch.setattr(logit_bias, "apply_logit_bias", _apply_logit_bias)


class ModelStub:
    """Stands in for the worker's model: the step's logits, which the V2 processor reads."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.raw_logits: torch.Tensor | None = None


class V2Runner:
    """One V2 worker's sampling side: vLLM's request state and sampler, our processor as its custom one,
    and a model stub holding each step's logits. Call :func:`install` first."""

    def __init__(self, model_dir: str, slots: int, vocab: int, max_len: int,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        config = SimpleNamespace(model_config=SimpleNamespace(model=model_dir), speculative_config=None,
                                 reasoning_config=None)
        cpu = torch.device("cpu")
        monkeypatch.setattr(engine.worker.live, "_model", None)  # set below; restored after the test
        self.req_states = RequestState(max_num_reqs=slots, max_model_len=max_len, max_num_batched_tokens=max_len,
                                       num_speculative_steps=0, vocab_size=vocab, device=cpu)
        self.processor = ChameleonSpanLogitsProcessorV2(
            config, LogitsProcRequestState.from_request_state(self.req_states))
        self.sampler = Sampler(config, slots, vocab, cpu, self.req_states,
                               custom_logits_processors=[self.processor])
        self.model = ModelStub(vocab)

    def add(self, req_id: str, prompt: Sequence[int], params: SamplingParams, output: Sequence[int] = ()) -> int:
        """A new request, or a preempted one resuming with its output so far, as the runner adds it."""
        self._live()
        self.req_states.add_request(req_id, len(prompt), [*prompt, *output], 0, params.max_tokens)
        slot = self.req_states.req_id_to_index[req_id]
        self.sampler.add_request(slot, params)
        return slot

    def remove(self, req_id: str) -> None:
        """Finish, abort or preemption."""
        self._live()
        self.req_states.remove_request(req_id)

    def _live(self) -> None:
        """This runner's model is the worker's (two runners stand for two ranks)."""
        engine.worker.live.register_model(self.model)

    def slot(self, req_id: str) -> int:
        return self.req_states.req_id_to_index[req_id]

    def sample_logits(self, req_ids: Sequence[str], logits: torch.Tensor) -> torch.Tensor:
        """The logits vLLM's sampler draws from for the model's ``logits`` (row i: ``req_ids[i]``), after
        every stage before temperature and top-k/top-p (none of which our requests use)."""
        self.req_states.apply_staged_writes()
        self.sampler.apply_staged_writes()
        self.model.raw_logits = logits
        self._live()
        slots = np.array([self.slot(r) for r in req_ids], dtype=np.int64)
        idx = torch.from_numpy(slots)
        lens = self.req_states.total_len.gpu[idx]
        return self.sampler.apply_sampling_params(
            logits.clone(), idx, idx, slots, lens.long() - 1, torch.zeros_like(idx), torch.zeros_like(idx),
            lens.numpy().copy(), skip_top_k_top_p=True)

    def commit(self, req_id: str, token: int) -> None:
        """The sampled token written back as the runner does after a step (history, length, output counts)."""
        slot = self.slot(req_id)
        n = int(self.req_states.total_len.gpu[slot])
        self.req_states.all_token_ids.gpu[slot, n] = token
        self.req_states.total_len.gpu[slot] = n + 1
        self.sampler.penalties_state.output_bin_counts[slot, token] += 1
