"""The span grammar end to end on the real vLLM CPU engine (V1 runner) with a tiny checkpoint (4x4 grid)."""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # before vLLM is imported

import pytest
from guidance_reference import guided_image_reference

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny_span"), TinySpec(grid=4, codebook_size=64))


@pytest.fixture(scope="module")
def engine(model_dir):
    """(LLM, layout), one engine for the module."""
    from vllm import LLM

    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=512, max_num_seqs=16,
              seed=0, logits_processors=[ChameleonSpanLogitsProcessorV1])
    yield llm, TokenLayout.from_checkpoint(model_dir)
    llm.llm_engine.engine_core.shutdown()


def prompts(layout: TokenLayout, count: int) -> list:
    """Short token-id prompts of plain text ids, distinct per index."""
    from vllm.inputs import TokensPrompt

    text = [i for i in range(4, layout.vocab_size) if i not in set(layout.span_token_ids())]
    return [TokensPrompt(prompt_token_ids=[0, *text[3 * k : 3 * k + 5], layout.sep]) for k in range(count)]


def generate(llm, layout, count: int, **params) -> list[list[int]]:
    from vllm import SamplingParams

    outs = llm.generate(prompts(layout, count), SamplingParams(**params), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def spans_ok(tokens: list[int], layout: TokenLayout) -> int:
    """Assert the span rule on one output; return the number of complete images."""
    codes, n, i, images = set(layout.code_to_id), layout.image_seq_length, 0, 0
    while i < len(tokens):
        if tokens[i] == layout.boi:
            body = tokens[i + 1 : i + 1 + n]
            assert all(t in codes for t in body), tokens
            if i + 1 + n < len(tokens):
                assert tokens[i + 1 + n] == layout.eoi, tokens
                images += 1
            i += n + 2
        else:
            assert tokens[i] not in codes and tokens[i] != layout.eoi, tokens
            i += 1
    return images


def test_text_only_never_writes_image_tokens(engine):
    llm, layout = engine
    forbidden = set(layout.span_token_ids())
    # biases toward BOI, EOI and a code must not get through the grammar
    bias = {layout.boi: 8.0, layout.eoi: 8.0, layout.code_to_id[0]: 8.0}
    for extra in (None, {"modalities": ["text"]}):
        outs = generate(llm, layout, 8, temperature=1.5, max_tokens=64, ignore_eos=True, seed=1,
                        logit_bias=bias, extra_args=extra)
        assert all(len(o) == 64 for o in outs)
        assert not forbidden & {t for o in outs for t in o}


def test_image_only_writes_boi_exactly_n_codes_eoi(engine):
    llm, layout = engine
    n = layout.image_seq_length
    for image_args in ({}, {"image_temperature": 0.0}, {"image_top_k": 5, "image_top_p": 0.5}):
        outs = generate(llm, layout, 6, temperature=1.0, max_tokens=n + 10, stop_token_ids=[layout.eoi],
                        extra_args={"modalities": ["image"], **image_args})
        for o in outs:
            assert o[0] == layout.boi and o[-1] == layout.eoi and len(o) == n + 2, o
            assert all(t in set(layout.code_to_id) for t in o[1:-1])


def test_interleaved_spans_are_always_complete(engine):
    llm, layout = engine
    outs = generate(llm, layout, 16, temperature=1.0, max_tokens=160, ignore_eos=True, seed=3,
                    logit_bias={layout.boi: 6.0, layout.eoi: 6.0},
                    extra_args={"modalities": ["text", "image"]})
    images = sum(spans_ok(o, layout) for o in outs)
    assert images >= 4  # the bias makes images common; every one of them well formed


def test_same_seed_same_image_codes(engine):
    llm, layout = engine
    from vllm import SamplingParams

    n = layout.image_seq_length

    def params(seed):
        return SamplingParams(temperature=1.0, seed=seed, max_tokens=n + 2, stop_token_ids=[layout.eoi],
                              extra_args={"modalities": ["image"], "image_temperature": 1.0})

    ps = prompts(layout, 1) * 4
    outs = llm.generate(ps, [params(11), params(12), params(11), params(13)], use_tqdm=False)
    codes = [list(o.outputs[0].token_ids) for o in outs]
    again = list(llm.generate(ps[:1], params(11), use_tqdm=False)[0].outputs[0].token_ids)
    assert codes[0] == codes[2] == again  # same seed: same codes, whatever the batch
    assert codes[1] != codes[0] or codes[3] != codes[0]


def guided_args(uncond: list[int], scale: float) -> dict:
    return {"modalities": ["image"], "image_temperature": 0.0, "cfg_scale": scale, "cfg_uncond_prompt": uncond}


def test_guided_image_equals_two_forward_reference(engine, model_dir):
    llm, layout = engine
    [prompt] = prompts(layout, 1)
    uncond = [0, layout.sep]  # BOS and an empty turn
    [got] = generate(llm, layout, 1, max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                     extra_args=guided_args(uncond, 3.0))
    assert got == guided_image_reference(model_dir, prompt["prompt_token_ids"], uncond, 3.0)
    [unguided] = generate(llm, layout, 1, max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                          extra_args={"modalities": ["image"], "image_temperature": 0.0})
    assert got != unguided  # guidance changed the image


def test_guided_rows_at_different_points_are_each_exact(engine, model_dir):
    """Companions made at different points (one prefilling while the other's row writes codes), with different
    unconditional prompts and scales: each image equals its reference."""
    from vllm import SamplingParams

    llm, layout = engine
    core = llm.llm_engine
    ps = prompts(layout, 2)
    unconds, scales = ([0, layout.sep], [0, *ps[1]["prompt_token_ids"][1:4], layout.sep]), (3.0, 1.5)
    params = [SamplingParams(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                             extra_args=guided_args(u, s)) for u, s in zip(unconds, scales)]
    core.add_request("early", ps[0], params[0])
    done: dict[str, list[int]] = {}
    for _ in range(5):  # the early one is a few codes in when the late one arrives
        done |= {o.request_id: list(o.outputs[0].token_ids) for o in core.step() if o.finished}
    core.add_request("late", ps[1], params[1])
    while core.has_unfinished_requests():
        done |= {o.request_id: list(o.outputs[0].token_ids) for o in core.step() if o.finished}
    for name, p, u, s in zip(("early", "late"), ps, unconds, scales):
        assert done[name] == guided_image_reference(model_dir, p["prompt_token_ids"], u, s)


def test_cfg_scale_one_is_the_unguided_path(engine):
    llm, layout = engine
    common = dict(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi], seed=7)
    hot = {"modalities": ["image"], "image_temperature": 1.0}
    assert generate(llm, layout, 3, extra_args={**hot, "cfg_scale": 1.0, "cfg_uncond_prompt": [0]}, **common) == \
        generate(llm, layout, 3, extra_args=hot, **common)


def test_guided_unguided_and_text_rows_in_one_batch(engine):
    from vllm import SamplingParams

    llm, layout = engine
    ps = prompts(layout, 3)
    image = dict(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi], temperature=0.0)
    params = [SamplingParams(**image, extra_args=guided_args([0, layout.sep], 2.5)),
              SamplingParams(**image, extra_args={"modalities": ["image"], "image_temperature": 0.0}),
              SamplingParams(max_tokens=24, temperature=0.0)]
    batched = [list(o.outputs[0].token_ids) for o in llm.generate(ps, params, use_tqdm=False)]
    alone = [list(llm.generate([p], [sp], use_tqdm=False)[0].outputs[0].token_ids) for p, sp in zip(ps, params)]
    assert batched == alone and len(set(map(tuple, batched))) == 3


@pytest.mark.parametrize("extra", [
    {"modalities": ["text"], "cfg_scale": 2.0, "cfg_uncond_prompt": [0]},
    {"modalities": ["image"], "cfg_scale": 2.0},
    {"modalities": ["image"], "cfg_scale": -1.0, "cfg_uncond_prompt": [0]},
])
def test_bad_guidance_args_are_refused(engine, extra):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    llm, layout = engine
    with pytest.raises(VLLMValidationError, match="cfg_"):
        llm.generate(prompts(layout, 1), SamplingParams(max_tokens=4, extra_args=extra), use_tqdm=False)
