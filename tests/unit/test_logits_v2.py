"""The Model Runner V2 adapter, driven through its real state objects on CPU tensors, against the V1 adapter.

Both adapters see the same requests, histories and logits every step (V1 through ``BatchUpdate`` and
live output lists, V2 through ``all_token_ids``/``total_len`` and slot mappings) and must return
identical logits, including after removals, row moves and a preempted request's re-entry.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

from engine.logits_v1 import ChameleonSpanLogitsProcessorV1
from engine.logits_v2 import ChameleonSpanLogitsProcessorV2
from engine.span_grammar import logits_processor_for_runner
from engine.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name

V, N, SLOTS, MAX_LEN = 40, 4, 8, 256
CODES = list(range(4, 12))
EOI, BOI = 12, 13
TEXT = [t for t in range(V) if t not in CODES and t not in (BOI, EOI)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake_ckpt")
    vocab = {code_name(i): tid for i, tid in enumerate(CODES)}
    vocab |= {EOI_NAME: EOI, BOI_NAME: BOI, IMAGE_PLACEHOLDER_NAME: 14, SEP_NAME: 15}
    (d / "config.json").write_text(json.dumps({"vocabulary_map": vocab, "vocab_size": V}))
    (d / "processor_config.json").write_text(json.dumps({"image_seq_length": N}))
    return str(d)


class Pair:
    """One V1 and one V2 processor fed the same requests; V2 slots deliberately differ from V1 rows."""

    def __init__(self, model_dir: str):
        model_config = SimpleNamespace(model=model_dir)
        self.v1 = ChameleonSpanLogitsProcessorV1(
            SimpleNamespace(model_config=model_config, scheduler_config=SimpleNamespace(max_num_seqs=SLOTS)),
            torch.device("cpu"), False)
        self.rs = LogitsProcRequestState(
            device=torch.device("cpu"), max_num_reqs=SLOTS, vocab_size=V,
            all_token_ids=SimpleNamespace(gpu=torch.zeros(SLOTS, MAX_LEN, dtype=torch.int32)),
            prompt_len=SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32)),
            prefill_len=SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32)),
            total_len=SimpleNamespace(gpu=torch.zeros(SLOTS, dtype=torch.int32)),
        )
        self.v2 = ChameleonSpanLogitsProcessorV2(
            SimpleNamespace(model_config=model_config, speculative_config=None), self.rs)
        self.batch: list[str] = []  # V1 row order
        self.prompt: dict[str, list[int]] = {}
        self.output: dict[str, list[int]] = {}
        self.slot2: dict[str, int] = {}
        self.free2 = list(range(SLOTS))
        random.Random(1).shuffle(self.free2)
        self.pending: dict[str, list] = {"removed": [], "added": [], "moved": []}
        self.holes: list[int] = []

    def add(self, rid: str, prompt: list[int], params: SamplingParams, output: list[int] | None = None):
        """A new request, or a preempted one re-entering with its output so far; fills a hole first."""
        self.prompt[rid], self.output[rid] = prompt, list(output or [])
        if self.holes:  # vLLM fills removed rows first; such a row is then "added", not "removed"
            row = self.holes.pop()
            self.pending["removed"].remove(row)
            self.batch[row] = rid
        else:
            row = len(self.batch)
            self.batch.append(rid)
        self.pending["added"].append((row, params, prompt, self.output[rid]))
        slot = self.slot2[rid] = self.free2.pop()
        prefill = prompt + self.output[rid]
        self.rs.prompt_len.np[slot], self.rs.prefill_len.np[slot] = len(prompt), len(prefill)
        self.rs.all_token_ids.gpu[slot, : len(prefill)] = torch.tensor(prefill)
        self.rs.total_len.gpu[slot] = len(prefill)
        self.v2.add_request(slot, params)

    def remove(self, rid: str):
        row = self.batch.index(rid)
        self.free2.append(self.slot2.pop(rid))
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

    def step(self, rng: random.Random, swap: bool = False) -> list[int]:
        """One engine step: removes and adds happened before; condense, maybe swap two rows, then apply both
        processors to the same logits, assert they agree, and commit one allowed token per row."""
        self.condense()
        if swap and len(self.batch) > 1:
            a, b = rng.sample(range(len(self.batch)), 2)
            self.batch[a], self.batch[b] = self.batch[b], self.batch[a]
            self.pending["moved"].append((a, b, MoveDirectionality.SWAP))
        if any(self.pending.values()):
            self.v1.update_state(BatchUpdate(batch_size=len(self.batch), **self.pending))
            self.pending = {"removed": [], "added": [], "moved": []}
        else:
            self.v1.update_state(None)
        logits = torch.randn(len(self.batch), V)
        slots = np.array([self.slot2[r] for r in self.batch], dtype=np.int64)
        idx = torch.from_numpy(slots)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=slots,
                            expanded_local_pos=torch.zeros_like(idx), input_ids=torch.zeros_like(idx),
                            pos=torch.zeros_like(idx), seq_lens_upper_bound_np=np.zeros(len(slots)))
        seed = rng.randrange(1 << 30)  # unseeded image rows draw from torch's global RNG
        torch.manual_seed(seed)
        out1 = self.v1.apply(logits.clone())
        torch.manual_seed(seed)
        out2 = self.v2.apply(logits.clone(), ctx)
        for rid, row1, row2 in zip(self.batch, out1, out2):
            assert torch.equal(row1, row2), (rid, self.output[rid])
        picks = [rng.choice(torch.isfinite(row).nonzero().flatten().tolist()) for row in out1]
        for rid, tok in zip(self.batch, picks):
            self.output[rid].append(tok)
            slot = self.slot2[rid]
            n = int(self.rs.total_len.gpu[slot])
            self.rs.all_token_ids.gpu[slot, n] = tok
            self.rs.total_len.gpu[slot] = n + 1
        return picks


def sp(modalities, seed=None, **image):
    return SamplingParams(seed=seed, extra_args={"modalities": modalities, **image})


def test_v2_matches_v1_through_adds_removes_moves_and_preemption(model_dir):
    rng = random.Random(0)
    pair = Pair(model_dir)
    pair.add("text", [1, 2], sp(["text"]))
    pair.add("mixed", [3, 16, 17], sp(["text", "image"]))
    pair.add("image", [1], sp(["image"], seed=5, image_temperature=1.0, image_top_k=3))
    # resumed mid-image: BOI and two codes already written; greedy image rows
    pair.add("resumed", [2, 3], sp(["text", "image"], image_temperature=0.0), output=[20, BOI, 4, 5])
    for i in range(40):
        if i == 9:
            pair.remove("text")
            pair.add("text2", [5], sp(["text"]))
        if i == 14:  # preempt "image" mid-stream and let it re-enter with its output
            params, prompt, output = sp(["image"], seed=5, image_temperature=1.0, image_top_k=3), \
                pair.prompt["image"], pair.output["image"]
            pair.remove("image")
            pair.add("image", prompt, params, output=output)
        pair.step(rng, swap=i in (5, 20))
    assert pair.output["image"][0] == BOI and pair.output["image"][N + 1] == EOI
    resumed = pair.output["resumed"]
    assert resumed[4] in CODES and resumed[5] in CODES and resumed[6] == EOI


def test_v2_random_workloads_match_v1(model_dir):
    rng = random.Random(3)
    for trial in range(6):
        pair = Pair(model_dir)
        for i in range(60):
            live = [r for r in pair.batch if r is not None]
            for rid in live:
                if len(live) > 1 and rng.random() < 0.05:
                    pair.remove(rid)
            while len(pair.slot2) < SLOTS and rng.random() < 0.3:
                modes = rng.choice([["text"], ["text", "image"], ["image"]])
                pair.add(f"r{trial}-{i}-{len(pair.slot2)}", [rng.choice(TEXT) for _ in range(3)],
                         sp(modes, seed=rng.choice([None, i]), image_temperature=rng.choice([0.0, 1.0])))
            if pair.slot2:
                pair.step(rng, swap=rng.random() < 0.2)


def test_v1_does_not_consume_async_placeholders(model_dir):
    """Under async scheduling the newest output is -1 at update_state and real by apply."""
    pair = Pair(model_dir)
    output = [BOI, CODES[0], -1]
    added = [(0, sp(["image"]), [1], output)]
    pair.v1.update_state(BatchUpdate(batch_size=1, removed=[], added=added, moved=[]))
    assert pair.v1.grammar.pos[0] == 1 and pair.v1.grammar.num_output[0] == 2
    output[-1] = CODES[1]
    row = pair.v1.apply(torch.randn(1, V))[0]
    assert pair.v1.grammar.pos[0] == 2 and pair.v1.grammar.num_output[0] == 3
    assert len(torch.isfinite(row).nonzero()) == 1


def test_v2_rejects_speculative_decoding(model_dir):
    with pytest.raises(ValueError, match="speculative"):
        ChameleonSpanLogitsProcessorV2(
            SimpleNamespace(model_config=SimpleNamespace(model=model_dir), speculative_config=object()), None)


def test_validate_params_on_both_classes():
    bad = SamplingParams(extra_args={"modalities": ["video"]})
    for cls in (ChameleonSpanLogitsProcessorV1, ChameleonSpanLogitsProcessorV2):
        with pytest.raises(ValueError, match="unknown modality"):
            cls.validate_params(bad)
        cls.validate_params(SamplingParams())
    guided = SamplingParams(extra_args={"modalities": ["image"], "cfg_scale": 3.0, "cfg_uncond_prompt": [0, 1]})
    ChameleonSpanLogitsProcessorV1.validate_params(guided)
    with pytest.raises(ValueError, match="not supported on vLLM's Model Runner V2 yet"):
        ChameleonSpanLogitsProcessorV2.validate_params(guided)


def test_runner_choice(monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert logits_processor_for_runner() is ChameleonSpanLogitsProcessorV2
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert logits_processor_for_runner() is ChameleonSpanLogitsProcessorV1
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    from vllm.triton_utils import HAS_TRITON

    expected = ChameleonSpanLogitsProcessorV2 if HAS_TRITON else ChameleonSpanLogitsProcessorV1
    assert logits_processor_for_runner() is expected
    v2_config = SimpleNamespace(use_v2_model_runner=True)
    assert logits_processor_for_runner(v2_config) is ChameleonSpanLogitsProcessorV2
