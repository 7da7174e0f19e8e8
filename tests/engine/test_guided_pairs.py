"""Guidance companions in vLLM's engine (``engine/core/guided_pairs.py``, ``engine/worker/guidance.py``): the
companion follows the row's text into each image, memory pressure preempts and resumes pairs, and guidance
adds rows to the forward, not work beside it."""

from __future__ import annotations

import pytest
from guidance_reference import guided_image_reference

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

    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=128, max_num_seqs=16,
              seed=0, block_size=BLOCK, num_gpu_blocks_override=7, disable_log_stats=False,
              logits_processors=[ChameleonSpanLogitsProcessorV1])
    yield llm, TokenLayout.from_checkpoint(model_dir)
    llm.llm_engine.engine_core.shutdown()


def prompt(layout: TokenLayout, k: int, words: int = 6) -> list[int]:
    text = [i for i in range(4, layout.vocab_size) if i not in set(layout.span_token_ids())]
    return [0, *text[4 * k : 4 * k + words], layout.sep]


def preemptions(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_text_written_between_images_reaches_the_companion(engine, model_dir):
    """An interleaved reply (text sampled, images greedy) with two images: each equals the two-forward
    reference whose conditional and unconditional sequences both hold the reply so far."""
    from vllm import SamplingParams

    llm, layout = engine
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
