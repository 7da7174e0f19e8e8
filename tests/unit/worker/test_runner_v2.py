"""The Model Runner V2 adapter inside vLLM's own V2 sampling path (``tests/v2_runner.py``: its request
state, staged writes, sampler and processor order on CPU tensors), against the V1 adapter in V1's order.

Both runners see the same requests, histories and model logits every step (V1 through ``BatchUpdate``
and live output lists, then vLLM's logit bias, our processor, vLLM's penalties; V2 through its request
state and ``Sampler``: bias, penalties, bad words, our processor) and must leave the same tokens
possible, with equal logits on text rows, including after removals, row moves, a preempted request's
re-entry, penalties and logit bias.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from v2_runner import V2Runner, install
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor.builtin import LogitBiasLogitsProcessor
from vllm.v1.sample.ops.penalties import apply_all_penalties

from engine.frontend.client import logits_processor_for_runner
from engine.shared.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1
from engine.worker.runner_v2 import ChameleonSpanLogitsProcessorV2

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


@pytest.fixture
def v2_on_cpu(monkeypatch):
    install(monkeypatch)
    return monkeypatch


def v1_config(model_dir: str):
    return SimpleNamespace(model_config=SimpleNamespace(model=model_dir),
                           scheduler_config=SimpleNamespace(max_num_seqs=SLOTS))


class Pair:
    """V1 and V2 fed the same requests; V2's slots come from its own request state, not V1's rows."""

    def __init__(self, model_dir: str, monkeypatch):
        self.v1 = ChameleonSpanLogitsProcessorV1(v1_config(model_dir), torch.device("cpu"), False)
        self.v1_bias = LogitBiasLogitsProcessor(None, torch.device("cpu"), False)
        self.v2 = V2Runner(model_dir, SLOTS, V, MAX_LEN, monkeypatch)
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
                                                  batch_first=True, padding_value=V)
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
        logits = torch.randn(len(self.batch), V)
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


PENALTIES = dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)


def test_v2_matches_v1_through_adds_removes_moves_preemption_penalties_and_bias(model_dir, v2_on_cpu):
    rng = random.Random(0)
    pair = Pair(model_dir, v2_on_cpu)
    pair.add("text", [1, 2], sp(["text"], **PENALTIES))
    pair.add("mixed", [3, 16, 17, *CODES[:3]], sp(["text", "image"], image_temperature=0.0, **PENALTIES))
    pair.add("image", [1], sp(["image"], seed=5, image_temperature=1.0, image_top_k=3, logit_bias={CODES[2]: 2.5}))
    # resumed mid-image: BOI and two codes already written; greedy image rows
    pair.add("resumed", [2, 3], sp(["text", "image"], image_temperature=0.0, repetition_penalty=2.0),
             output=[20, BOI, 4, 5])
    for i in range(40):
        if i == 9:
            pair.remove("text")
            pair.add("text2", [5], sp(["text"], logit_bias={16: -3.0}))
        if i == 14:  # preempt "image" mid-stream and let it re-enter with its output
            params, prompt, output = pair.params["image"], pair.prompt["image"], pair.output["image"]
            pair.remove("image")
            pair.add("image", prompt, params, output=output)
        pair.step(rng, swap=i in (5, 20))
    assert pair.output["image"][0] == BOI and pair.output["image"][N + 1] == EOI
    resumed = pair.output["resumed"]
    assert resumed[4] in CODES and resumed[5] in CODES and resumed[6] == EOI


def test_guided_requests_match_on_both_runners(model_dir, v2_on_cpu):
    """Guidance twins (a model stub whose twin logits are a function of the twin's history) on both runners:
    image-only and interleaved, a negative prompt and none, greedy and sampled, beside an unguided request, and
    a guided request preempted mid-image that re-enters with its output."""
    rng = random.Random(11)
    pair = Pair(model_dir, v2_on_cpu)
    pair.add("plain", [1, 2], sp(["text", "image"], image_temperature=1.0))
    pair.add("guided", [1, 2, 3], sp(["image"], image_temperature=0.0, cfg_scale=3.0, cfg_uncond_prompt=[1, 15]))
    pair.add("bare", [2], sp(["image"], image_temperature=1.0, cfg_scale=2.0, cfg_uncond_prompt=[]))
    pair.add("mixed", [3], sp(["text", "image"], image_temperature=0.0, cfg_scale=4.0, cfg_uncond_prompt=[15],
                               **PENALTIES), output=[20, 21])
    for i in range(3 * (N + 2)):
        if i == 4:
            params, prompt, output = pair.params["guided"], pair.prompt["guided"], pair.output["guided"]
            pair.remove("guided")
            pair.add("guided", prompt, params, output=output)
        pair.step(rng, swap=i == 7)
    assert pair.output["guided"][N + 1] == EOI and pair.output["bare"][N + 1] == EOI


def test_a_request_leaving_the_batch_drops_its_twin_at_once(model_dir, v2_on_cpu):
    """On V2 the model state, told of finish, abort and preemption by request id, frees the twin's cache;
    the processor alone would keep it until its slot is reused."""
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState

    from engine.worker.model import ChameleonForConditionalGeneration
    from engine.worker.runner_v2 import ReleasesTwins

    cls = ChameleonForConditionalGeneration.get_model_state_cls()
    assert issubclass(cls, ReleasesTwins) and issubclass(cls, DefaultModelState)
    runner = V2Runner(model_dir, SLOTS, V, MAX_LEN, v2_on_cpu)
    slot = runner.add("g", [1, 2], sp(["image"], cfg_scale=3.0, cfg_uncond_prompt=[]))
    runner.sample_logits(["g"], torch.randn(1, V))
    twins = runner.processor.guidance._twins
    assert twins[slot] is not None and twins[slot].cache is not None
    runner.remove("g")
    assert twins[slot] is None


def test_v2_random_workloads_match_v1(model_dir, v2_on_cpu):
    rng = random.Random(3)
    for trial in range(6):
        pair = Pair(model_dir, v2_on_cpu)
        live = pair.v2.req_states.req_id_to_index
        for i in range(60):
            for rid in list(live):
                if len(live) > 1 and rng.random() < 0.05:
                    pair.remove(rid)
            while len(live) < SLOTS and rng.random() < 0.3:
                modes = rng.choice([["text"], ["text", "image"], ["image"]])
                extra = rng.choice([{}, PENALTIES, {"logit_bias": {rng.choice(CODES): 1.5, rng.choice(TEXT): -2.0}}])
                pair.add(f"r{trial}-{i}-{len(live)}", [rng.choice(TEXT + CODES) for _ in range(3)],
                         sp(modes, seed=rng.choice([None, i]), image_temperature=rng.choice([0.0, 1.0]), **extra))
            if live:
                pair.step(rng, swap=rng.random() < 0.2)


def test_a_penalty_never_reaches_an_image_code(model_dir, v2_on_cpu):
    """The model's best code is in the prompt (an input image): a repetition penalty of 4 would put another
    code first, but image codes are sampled from the model's logits on both runners."""
    params = sp(["image"], image_temperature=0.0, repetition_penalty=4.0, presence_penalty=1.0)
    logits = torch.zeros(1, V)
    logits[0, CODES[1]], logits[0, CODES[5]] = 2.0, 1.0  # CODES[1] is in the prompt, CODES[5] is not
    picks = {}
    for name, run in (("v1", "v1_sample_logits"), ("v2", None)):
        pair = Pair(model_dir, v2_on_cpu)
        pair.add("image", [1, BOI, CODES[1], EOI], params, output=[BOI])
        pair.condense()
        out = pair.v1_sample_logits(logits.clone()) if run else pair.v2.sample_logits(["image"], logits)
        picks[name] = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert picks == {"v1": [CODES[1]], "v2": [CODES[1]]}


def test_unseeded_image_draws_agree_across_ranks(model_dir, v2_on_cpu):
    """Model Runner V2 commits each tensor-parallel rank's own samples: two ranks whose torch RNGs differ must
    still draw the same codes for a request without a seed (vLLM seeds every worker's numpy alike)."""
    ranks = []
    for _ in range(2):
        np.random.seed(0)
        runner = V2Runner(model_dir, SLOTS, V, MAX_LEN, v2_on_cpu)
        runner.add("image", [1, 2], SamplingParams(extra_args={"modalities": ["image"], "image_temperature": 1.0}))
        ranks.append(runner)
    for step in range(N + 2):
        logits = torch.randn(1, V)
        rows = []
        for rank, runner in enumerate(ranks):
            torch.manual_seed(100 * step + rank)
            rows.append(runner.sample_logits(["image"], logits))
        [token] = torch.isfinite(rows[0][0]).nonzero().flatten().tolist()
        assert torch.isfinite(rows[1][0]).nonzero().flatten().tolist() == [token]
        for runner in ranks:
            runner.commit("image", token)


def test_v1_does_not_consume_async_placeholders(model_dir):
    """Under async scheduling the newest output is -1 at update_state and real by apply."""
    v1 = ChameleonSpanLogitsProcessorV1(v1_config(model_dir), torch.device("cpu"), False)
    output = [BOI, CODES[0], -1]
    added = [(0, sp(["image"]), [1], output)]
    v1.update_state(BatchUpdate(batch_size=1, removed=[], added=added, moved=[]))
    assert v1.grammar.pos[0] == 1 and v1.grammar.num_output[0] == 2
    output[-1] = CODES[1]
    row = v1.apply(torch.randn(1, V))[0]
    assert v1.grammar.pos[0] == 2 and v1.grammar.num_output[0] == 3
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
    for cls in (ChameleonSpanLogitsProcessorV1, ChameleonSpanLogitsProcessorV2):
        cls.validate_params(guided)


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


class DeviceReads:
    """Counts, while on, what would make the host wait for a device: reading a tensor back (``.cpu()``,
    ``.numpy()``, ``.tolist()``, ``.item()``, its truth or number value, ``nonzero``, a boolean-mask index)
    and copying host data in without pinned memory (``torch.tensor``, ``Tensor.to``). On CPU tensors nothing
    waits, so the calls are counted instead."""

    READS = ("cpu", "numpy", "tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "to")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.on = False
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "tensor", self._counted("torch.tensor", torch.tensor))
        for name in ("__getitem__", "__setitem__"):
            original = getattr(torch.Tensor, name)

            def index(tensor, key, *value, _original=original, _name=name):
                keys = key if isinstance(key, tuple) else (key,)
                if self.on and any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                    self.calls.append(f"{_name} with a boolean mask")
                return _original(tensor, key, *value)

            monkeypatch.setattr(torch.Tensor, name, index)

    def _counted(self, name, original):
        def call(*args, **kwargs):
            if self.on:
                self.calls.append(name)
            return original(*args, **kwargs)
        return call

    def during(self, fn):
        def call(*args, **kwargs):
            self.on = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.on = False
        return call


def test_the_processors_never_wait_for_the_device(model_dir, v2_on_cpu):
    """Model Runner V2 overlaps a step's host work with the last step's kernels: a processor that reads from
    the device every step cancels that. Both adapters, on a mixed batch (text, interleaved, image-only with
    top-k/top-p and greedy, logit bias), with the draw of an accelerator (engine.worker.nucleus._draw_tensor)."""
    from engine.worker.nucleus import _draw_tensor

    reads = DeviceReads(v2_on_cpu)
    pair = Pair(model_dir, v2_on_cpu)
    for grammar in (pair.v1.grammar, pair.v2.processor.grammar):
        grammar._draw_nucleus = _draw_tensor
    pair.v1.apply = reads.during(pair.v1.apply)
    pair.v2.processor.apply = reads.during(pair.v2.processor.apply)
    pair.add("text", [1, 2], sp(["text"]))
    pair.add("mixed", [3, 16], sp(["text", "image"], image_temperature=1.0, image_top_p=0.8))
    pair.add("image", [1], sp(["image"], image_temperature=1.0, image_top_k=3, logit_bias={CODES[0]: 1.0}))
    pair.add("greedy", [2], sp(["image"], image_temperature=0.0), output=[BOI, CODES[1]])
    rng = random.Random(5)
    for _ in range(N + 3):
        pair.step(rng)
    assert pair.output["image"][0] == BOI and pair.output["image"][N + 1] == EOI
    assert reads.calls == []
