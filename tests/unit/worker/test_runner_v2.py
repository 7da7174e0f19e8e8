"""The Model Runner V2 adapter inside vLLM's own V2 sampling path (``tests/v2_runner.py``: its request
state, staged writes, sampler and processor order on CPU tensors), against the V1 adapter in V1's order.

Both runners see the same requests, histories and model logits every step (V1 through ``BatchUpdate``
and live output lists, then vLLM's logit bias, our processor, vLLM's penalties; V2 through its request
state and ``Sampler``: bias, penalties, bad words, our processor) and must leave the same tokens
possible, with equal logits on text rows, including after removals, row moves, a preempted request's
re-entry, penalties and logit bias.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from runner_pair import MAX_LEN, PENALTIES, SLOTS, Pair, chameleon_checkpoint, companion, guided, sp, v1_config
from v2_runner import V2Runner, install
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from engine.frontend.client import logits_processor_for_runner
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1
from engine.worker.runner_v2 import ChameleonSpanLogitsProcessorV2

V, N = 40, 4
CODES = list(range(4, 12))
EOI, BOI = 12, 13
TEXT = [t for t in range(V) if t not in CODES and t not in (BOI, EOI)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return chameleon_checkpoint(tmp_path_factory.mktemp("fake_ckpt"), V, N)


@pytest.fixture
def v2_on_cpu(monkeypatch):
    install(monkeypatch)
    return monkeypatch


def test_v2_matches_v1_through_adds_removes_moves_preemption_penalties_and_bias(model_dir, v2_on_cpu):
    rng = random.Random(0)
    pair = Pair(model_dir, v2_on_cpu, V)
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


def test_guided_rows_and_companions_match_on_both_runners(model_dir, v2_on_cpu):
    """Guided rows beside their companions, on both runners: image-only and interleaved, greedy and sampled,
    beside an unguided request, a pair re-entering mid-image, and row moves. Each companion writes exactly what
    its row writes, up to the span's EOI."""
    rng = random.Random(11)
    pair = Pair(model_dir, v2_on_cpu, V)
    pair.add("plain", [1, 2], sp(["text", "image"], image_temperature=1.0))
    pair.add("guided", [1, 2, 3], guided("guided", ["image"], 3.0, image_temperature=0.0))
    pair.add("guided~u", [1, 15], companion("guided"))
    pair.add("mixed", [3], guided("mixed", ["text", "image"], 4.0, image_temperature=1.0, **PENALTIES),
             output=[20, BOI])
    pair.add("mixed~u", [15, 20, BOI], companion("mixed"))
    for i in range(N + 2):
        if i == 2:  # a preempted pair re-enters with its output so far
            for rid in ("guided", "guided~u"):
                params, prompt, output = pair.params[rid], pair.prompt[rid], pair.output[rid]
                pair.remove(rid)
                pair.add(rid, prompt, params, output=output)
        picks = dict(zip(pair.batch, pair.step(rng, swap=i == 3)))
        for rid in ("guided", "mixed"):
            if f"{rid}~u" in picks:
                assert picks[f"{rid}~u"] == picks[rid]
                if picks[rid] == EOI:  # the span is over: so is the companion (the scheduler's)
                    pair.remove(f"{rid}~u")
    assert pair.output["guided"][N + 1] == EOI and pair.output["mixed"][N + 2] == EOI


def test_v2_random_workloads_match_v1(model_dir, v2_on_cpu):
    rng = random.Random(3)
    for trial in range(6):
        pair = Pair(model_dir, v2_on_cpu, V)
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
        pair = Pair(model_dir, v2_on_cpu, V)
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
    assert v1.grammar.state.pos[0] == 1 and v1.grammar.state.num_output[0] == 2
    output[-1] = CODES[1]
    row = v1.apply(torch.randn(1, V))[0]
    assert v1.grammar.state.pos[0] == 2 and v1.grammar.state.num_output[0] == 3
    assert len(torch.isfinite(row).nonzero()) == 1


def test_both_runners_reject_foreign_speculative_decoding(model_dir):
    """Drafts of another proposer would escape the grammar; V1 takes SJD's own (engine/worker/jacobi_v1.py)."""
    ngram = SimpleNamespace(method="ngram", model=None, num_speculative_tokens=3)
    config = SimpleNamespace(model_config=SimpleNamespace(model=model_dir), speculative_config=ngram,
                             scheduler_config=SimpleNamespace(max_num_seqs=SLOTS))
    with pytest.raises(ValueError, match="speculative"):
        ChameleonSpanLogitsProcessorV2(config, None)
    with pytest.raises(ValueError, match="speculative"):
        ChameleonSpanLogitsProcessorV1(config, torch.device("cpu"), False)


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
