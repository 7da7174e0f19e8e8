"""Guidance companions in vLLM's engine (``engine/core/guided_pairs.py``, ``engine/worker/guidance.py``): the
companion follows the row's text into each image, memory pressure preempts and resumes pairs, and guidance
adds rows to the forward, not work beside it."""

from __future__ import annotations

import os
import statistics
from collections import Counter

import pytest
from guidance_reference import guided_image_reference
from lumina_reference import lumina_greedy_image
from torch.utils._python_dispatch import TorchDispatchMode

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

BLOCK = 32  # the CPU attention's smallest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny_pairs"), TinySpec(grid=4, codebook_size=64))


@pytest.fixture(scope="module")
def engine(model_dir):
    """(LLM, layout): a KV cache of 7 blocks of 32 tokens: a guided image and its companion take a block each,
    so six at once do not fit."""
    from vllm import LLM

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # llm.apply_model(step probes), to this test's processes
    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=128, max_num_seqs=16,
              seed=0, block_size=BLOCK, num_gpu_blocks_override=7, disable_log_stats=False,
              logits_processors=[ChameleonSpanLogitsProcessorV1])
    yield llm, TokenLayout.from_checkpoint(model_dir)
    llm.llm_engine.engine_core.shutdown()
    del os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"]


def prompt(layout: TokenLayout, k: int, words: int = 6) -> list[int]:
    text = [i for i in range(4, layout.vocab_size) if i not in set(layout.span_token_ids())]
    return [0, *text[4 * k : 4 * k + words], layout.sep]


def preemptions(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_text_written_between_images_reaches_the_companion(engine, model_dir):
    """An interleaved reply (text sampled, images greedy) with two images: each equals the two-forward
    reference whose conditional and unconditional sequences both hold the reply so far."""
    images_follow_the_reply(*engine, model_dir)


def test_synchronous_scheduling_and_a_batch_full_of_guided_rows(model_dir):
    """vLLM's synchronous scheduler (``async_scheduling=False``) with companions: the same images; and four guided
    images where four requests fill the batch (``max_num_seqs``): the rows make room for companions by turns."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=128, max_num_seqs=4, seed=0,
              async_scheduling=False, logits_processors=[ChameleonSpanLogitsProcessorV1])
    layout = TokenLayout.from_checkpoint(model_dir)
    try:
        images_follow_the_reply(llm, layout, model_dir)
        prompts = [{"prompt_token_ids": prompt(layout, k)} for k in range(4)]
        params = SamplingParams(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                                extra_args={"modalities": ["image"], "image_temperature": 0.0, "cfg_scale": 2.0,
                                            "cfg_uncond_prompt": [0, layout.sep]})
        together = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        assert together == [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts]
    finally:
        llm.llm_engine.engine_core.shutdown()


def images_follow_the_reply(llm, layout: TokenLayout, model_dir) -> None:
    """Two images of a guided interleaved reply each equal the two-forward reference over the reply so far."""
    from vllm import SamplingParams

    cond, uncond = prompt(layout, 0), [0, layout.sep]
    params = SamplingParams(max_tokens=4 * layout.image_seq_length + 24, seed=3, logit_bias={layout.boi: 6.0},
                            extra_args={"modalities": ["text", "image"], "image_temperature": 0.0, "cfg_scale": 3.0,
                                        "cfg_uncond_prompt": uncond})
    [out] = llm.generate([{"prompt_token_ids": cond}], params, use_tqdm=False)
    tokens = list(out.outputs[0].token_ids)
    starts = [i for i, t in enumerate(tokens) if t == layout.boi]
    assert len(starts) >= 2 and starts[0] > 0 and starts[1] > starts[0] + layout.image_seq_length + 2, tokens
    for b in starts[:2]:
        image = tokens[b : b + layout.image_seq_length + 2]
        assert image == guided_image_reference(model_dir, cond + tokens[:b], uncond + tokens[:b], 3.0)


def test_lumina_companions_follow_each_image_alone(tmp_path):
    """Lumina-mGPT guides from the image alone: in an interleaved reply the companion of each image starts at
    its BOI (no prompt, no text before it) and the image equals the authors' guidance."""
    from vllm import LLM, SamplingParams

    model_dir = make_tiny(tmp_path / "lumina", TinySpec(grid=4, codebook_size=64, family="lumina"))
    layout = TokenLayout.from_checkpoint(model_dir)
    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=256, max_num_seqs=4, seed=0,
              logits_processors=[ChameleonSpanLogitsProcessorV1])
    try:
        cond = prompt(layout, 1)
        span = layout.span.span_length((layout.span.native_grid,) * 2)
        params = SamplingParams(max_tokens=span + 24, seed=5, logit_bias={layout.boi: 6.0}, stop_token_ids=[layout.eoi],
                                extra_args={"modalities": ["text", "image"], "image_temperature": 0.0,
                                            "cfg_scale": 3.0, "cfg_uncond_prompt": []})
        [out] = llm.generate([{"prompt_token_ids": cond}], params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    tokens = list(out.outputs[0].token_ids)
    b = tokens.index(layout.boi)
    assert b > 0, tokens
    grid = layout.span.native_grid
    guided = lumina_greedy_image(model_dir, cond + tokens[:b], grid, grid, cfg_scale=3.0)
    assert tokens[b:] == guided != lumina_greedy_image(model_dir, cond + tokens[:b], grid, grid)


def test_pairs_preempted_under_memory_pressure_write_what_they_write_alone(engine):
    """Six guided images at once need more blocks than the cache holds (each row crosses into a second block
    mid-image): rows are preempted, their companions go with them, and each resumes with a new companion;
    every image equals the one written alone."""
    from vllm import SamplingParams

    llm, layout = engine
    prompts = [{"prompt_token_ids": prompt(layout, k, words=22)} for k in range(6)]
    params = SamplingParams(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                            extra_args={"modalities": ["image"], "image_temperature": 0.0, "cfg_scale": 2.5,
                                        "cfg_uncond_prompt": [0, layout.sep]})
    before = preemptions(llm)
    together = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    assert preemptions(llm) > before
    alone = [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts]
    assert together == alone
    assert all(len(t) == layout.image_seq_length + 2 for t in together)


class _StepOps(TorchDispatchMode):
    """Counts the ops each engine step dispatches in a worker (a step starts with the model's forward), all
    of them and those inside the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[Counter, Counter]] = []
        self.in_forward = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.steps:
            name = func.overloadpacket.__name__
            self.steps[-1][0][name] += 1
            self.steps[-1][1][name] += self.in_forward
        return func(*args, **(kwargs or {}))


def _probe_steps(model) -> None:
    probe = _StepOps()
    forward = model.forward

    def counted(*args, **kwargs):
        probe.steps.append((Counter(), Counter()))
        probe.in_forward = True
        try:
            return forward(*args, **kwargs)
        finally:
            probe.in_forward = False

    model.forward, model._step_ops = counted, (probe, forward)
    probe.__enter__()


def _stepped_ops(model) -> list[tuple[dict[str, int], dict[str, int]]]:
    probe, forward = model._step_ops
    probe.__exit__(None, None, None)
    model.forward = forward
    del model._step_ops
    return [(dict(every), {k: v for k, v in in_forward.items() if v}) for every, in_forward in probe.steps]


def step_ops(llm, prompts: list, params) -> list[tuple[dict[str, int], dict[str, int]]]:
    """The ops of every step that ``llm.generate(prompts, params)`` runs, counted in the worker: (all, those
    of the model's forward), by op name."""
    llm.apply_model(_probe_steps)
    llm.generate(prompts, params, use_tqdm=False)
    [steps] = llm.apply_model(_stepped_ops)
    return steps


def test_guidance_adds_a_row_to_the_step_not_a_forward(engine):
    """A guided image (its row and its companion: two rows a step) dispatches per step what two unguided images
    do, plus the few ops that combine the two rows' logits; no cache is padded or copied for it."""
    from vllm import SamplingParams

    llm, layout = engine
    image = dict(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi])
    plain = {"modalities": ["image"], "image_temperature": 0.0}
    guided = step_ops(llm, [{"prompt_token_ids": prompt(layout, 0)}],
                      SamplingParams(**image, extra_args={**plain, "cfg_scale": 3.0, "cfg_uncond_prompt": [0]}))
    unguided = step_ops(llm, [{"prompt_token_ids": prompt(layout, k)} for k in range(2)],
                        SamplingParams(**image, extra_args=plain))
    forward = {tuple(sorted(f.items())) for _, f in guided + unguided}
    assert len(forward) == 1  # one forward a step, the same ops for two rows, guided or not
    per_step = [statistics.median(sum(every.values()) for every, _ in run) for run in (guided, unguided)]
    assert per_step[0] - per_step[1] < sum(guided[0][1].values()) / 2  # a second forward would double it
    assert not any(name in every for every, _ in guided for name in ("constant_pad_nd", "pad_sequence", "cat"))
