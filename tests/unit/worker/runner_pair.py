"""Both runners' adapters fed the same requests (:class:`Pair`): V1 through ``BatchUpdate`` and live output lists,
then vLLM's logit bias, our processor, vLLM's penalties; V2 through ``tests/v2_runner.py``. Each step asserts that
they leave the same tokens possible, with equal logits on text rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import torch
from v2_runner import V2Runner
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor.builtin import LogitBiasLogitsProcessor
from vllm.v1.sample.ops.penalties import apply_all_penalties

from engine.shared.companions import COMPANION_KEY, PAIR_KEY
from engine.shared.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

SLOTS, MAX_LEN = 8, 256


def chameleon_checkpoint(d: Path, vocab_size: int, image_seq_length: int) -> str:
    """A folder with what the token layout reads, Chameleon-shaped: 8 codes at ids 4-11, EOI 12, BOI 13."""
    vocab = {code_name(i): 4 + i for i in range(8)}
    vocab |= {EOI_NAME: 12, BOI_NAME: 13, IMAGE_PLACEHOLDER_NAME: 14, SEP_NAME: 15}
    (d / "config.json").write_text(json.dumps({"vocabulary_map": vocab, "vocab_size": vocab_size}))
    (d / "processor_config.json").write_text(json.dumps({"image_seq_length": image_seq_length}))
    return str(d)


def v1_config(model_dir: str, slots: int = SLOTS):
    return SimpleNamespace(model_config=SimpleNamespace(model=model_dir),
                           scheduler_config=SimpleNamespace(max_num_seqs=slots))


class Pair:
    """V1 and V2 fed the same requests; V2's slots come from its own request state, not V1's rows."""

    def __init__(self, model_dir: str, monkeypatch, vocab: int, slots: int = SLOTS):
        self.vocab = vocab
        self.v1 = ChameleonSpanLogitsProcessorV1(v1_config(model_dir, slots), torch.device("cpu"), False)
        self.v1_bias = LogitBiasLogitsProcessor(None, torch.device("cpu"), False)
        self.v2 = V2Runner(model_dir, slots, vocab, MAX_LEN, monkeypatch)
        self.batch: list[str | None] = []  # V1 row order
        self.params: dict[str, SamplingParams] = {}
        self.prompt: dict[str, list[int]] = {}
        self.output: dict[str, list[int]] = {}
        self.pending: dict[str, list] = {"removed": [], "added": [], "moved": []}
        self.holes: list[int] = []

    def add(self, rid: str, prompt: list[int], params: SamplingParams, output: list[int] | None = None):
        """A new request, or a preempted one re-entering with its output so far; fills a hole first."""
        self.prompt[rid], self.output[rid], self.params[rid] = prompt, list(output or []), params
        if self.holes:  # vLLM fills removed rows first; such a row is then "added", not "removed"
            row = self.holes.pop()
            self.pending["removed"].remove(row)
            self.batch[row] = rid
        else:
            row = len(self.batch)
            self.batch.append(rid)
        self.pending["added"].append((row, params, prompt, self.output[rid]))
        self.v2.add(rid, prompt, params, self.output[rid])

    def remove(self, rid: str):
        row = self.batch.index(rid)
        self.v2.remove(rid)
        self.batch[row] = None
        self.holes.append(row)
        self.pending["removed"].append(row)

    def condense(self):
        """Move the last rows into holes, as vLLM's persistent batch does."""
        for hole in sorted(self.holes):
            while self.batch and self.batch[-1] is None:
                self.batch.pop()
            if hole < len(self.batch):
                self.batch[hole] = self.batch.pop()
                self.pending["moved"].append((len(self.batch), hole, MoveDirectionality.UNIDIRECTIONAL))
        while self.batch and self.batch[-1] is None:
            self.batch.pop()
        self.holes.clear()

    def v1_sample_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """V1's order: logit bias and our processor (non-argmax-invariant processors), then penalties."""
        batch = BatchUpdate(batch_size=len(self.batch), **self.pending) if any(self.pending.values()) else None
        self.pending = {"removed": [], "added": [], "moved": []}
        for processor in (self.v1_bias, self.v1):
            processor.update_state(batch)
        out = self.v1.apply(self.v1_bias.apply(logits))
        params = [self.params[r] for r in self.batch]
        prompts = torch.nn.utils.rnn.pad_sequence([torch.tensor(self.prompt[r]) for r in self.batch],
                                                  batch_first=True, padding_value=self.vocab)
        return apply_all_penalties(out, prompts, *(torch.tensor([getattr(p, f) for p in params])
                                                   for f in ("presence_penalty", "frequency_penalty",
                                                             "repetition_penalty")),
                                   [self.output[r] for r in self.batch])

    def step(self, rng: random.Random, swap: bool = False) -> list[int]:
        """One engine step: removes and adds happened before; condense, maybe swap two rows, then sample
        logits on both runners from the same model logits, assert they agree, and commit one allowed token
        per row."""
        self.condense()
        if swap and len(self.batch) > 1:
            a, b = rng.sample(range(len(self.batch)), 2)
            self.batch[a], self.batch[b] = self.batch[b], self.batch[a]
            self.pending["moved"].append((a, b, MoveDirectionality.SWAP))
        logits = torch.randn(len(self.batch), self.vocab)
        torch.manual_seed(rng.randrange(1 << 30))  # the runners' torch RNGs differ: no draw may depend on them
        out1 = self.v1_sample_logits(logits.clone())
        torch.manual_seed(rng.randrange(1 << 30))
        out2 = self.v2.sample_logits(self.batch, logits)
        for rid, row1, row2 in zip(self.batch, out1, out2):
            finite = torch.isfinite(row1)
            assert torch.equal(finite, torch.isfinite(row2)), (rid, self.output[rid])
            if finite.sum() > 1:  # a text row: equal logits (one finite token is a forced or sampled one)
                assert torch.equal(row1, row2), (rid, self.output[rid])
        picks = [rng.choice(torch.isfinite(row).nonzero().flatten().tolist()) for row in out1]
        for rid, tok in zip(self.batch, picks):
            self.output[rid].append(tok)
            self.v2.commit(rid, tok)
        return picks


def sp(modalities, seed=None, **kw):
    """Params as the server sends them: requests that may write images always carry a seed."""
    image = {k: kw.pop(k) for k in list(kw) if k.startswith(("image_", "cfg_"))}  # our extra_args
    if seed is None and "image" in modalities:
        seed = 1234
    return SamplingParams(seed=seed, extra_args={"modalities": modalities, **image}, **{"max_tokens": 64, **kw})


def guided(rid: str, modalities, scale: float, uncond: list[int] = (15,), **kw) -> SamplingParams:
    """A guided request's params, with the pair mark the scheduler gives it (engine/core/guided_pairs.py)."""
    params = sp(modalities, cfg_scale=scale, cfg_uncond_prompt=list(uncond), **kw)
    params.extra_args[PAIR_KEY] = rid
    return params


def companion(rid: str) -> SamplingParams:
    """The unconditional companion of ``rid``, as the scheduler makes it."""
    return SamplingParams(max_tokens=64, temperature=0.0, extra_args={PAIR_KEY: rid, COMPANION_KEY: True})


PENALTIES = dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)


