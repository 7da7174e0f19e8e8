"""Request fields -> vLLM SamplingParams: what an image-only reply leaves to the span processor."""

from __future__ import annotations

import asyncio
from types import MappingProxyType, SimpleNamespace

import pytest

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.families import CHAMELEON
from engine.shared.image_sizes import ListedSizes
from engine.shared.vocab import TokenLayout
from schemas.chat import ChatCompletionRequest
from server.pipeline import chat_options
from server.sampling import sampling_params


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The fields of ChameleonEngine that sampling_params reads, from a real tiny checkpoint's layout."""
    layout = TokenLayout.from_checkpoint(make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec(grid=4, codebook_size=64)))
    sizes = ListedSizes(MappingProxyType({"64x64": (4, 4)}))
    return SimpleNamespace(layout=layout, image_grid=(4, 4), image_sizes=sizes, can_paint=True, max_model_len=4096,
                           guides=True)


def _params(engine, modalities: list[str], **fields):
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "draw"}], modalities=modalities,
                                **fields)
    options = asyncio.run(chat_options(engine, SimpleNamespace(family=CHAMELEON), req))
    return sampling_params(req, engine, 8, req.max_new_tokens, end_of_turn=True, family=CHAMELEON, options=options)


def test_an_image_only_reply_is_greedy_for_vllm_and_not_detokenized(engine):
    """The span processor picks every token of an image-only reply (one finite logit per row), so vLLM's own
    draw over the vocabulary and its detokenizer would be work for nothing; the image sampling settings
    travel in extra_args."""
    params = _params(engine, ["image"], temperature=0.9, top_p=0.5, stop=["Z"], seed=3)
    assert (params.temperature, params.detokenize, params.stop, params.include_stop_str_in_output) == \
        (0.0, False, [], False)
    assert engine.layout.eoi in params.stop_token_ids
    assert params.extra_args["image_temperature"] == 0.7 and params.seed == 3


def test_image_only_with_several_choices_keeps_a_random_draw(engine):
    """vLLM refuses greedy sampling with n > 1; the draw still sees one finite logit per row."""
    params = _params(engine, ["image"], n=2)
    assert params.n == 2 and params.temperature > 0 and not params.detokenize


@pytest.mark.parametrize("modalities", [["text"], ["text", "image"]])
def test_replies_that_may_hold_text_keep_the_request_sampling(engine, modalities):
    params = _params(engine, modalities, temperature=0.9, top_p=0.5, stop=["Z"])
    assert (params.temperature, params.top_p, params.detokenize, params.stop) == (0.9, 0.5, True, ["Z"])


@pytest.mark.parametrize("modalities", [["image"], ["text", "image"]])
def test_a_request_that_may_write_images_gets_a_seed_at_admission(engine, modalities):
    """Image codes are drawn from a generator keyed by the request's seed, so every tensor-parallel rank draws
    the same ones: one without a seed gets one here, a new one each time; its own seed is kept."""
    seeds = {_params(engine, modalities).seed for _ in range(3)}
    assert None not in seeds and len(seeds) == 3 and all(0 <= s < 2**62 for s in seeds)
    assert _params(engine, modalities, seed=9).seed == 9
    assert _params(engine, ["text"]).seed is None


def test_min_tokens_on_an_image_only_reply_is_a_400(engine):
    """vLLM's min_tokens forbids the stop tokens, EOI among them, and the span grammar does not re-allow what
    an earlier stage forbade: an image-only reply (one image, then done) refuses it."""
    from server.errors import BadRequest

    with pytest.raises(BadRequest, match="min_tokens") as err:
        _params(engine, ["image"], min_tokens=3)
    assert err.value.param == "min_tokens"
    assert _params(engine, ["text", "image"], min_tokens=3).min_tokens == 3


@pytest.mark.parametrize("guides", [True, False])
def test_lumina_guidance_defaults_on_every_reply_with_images(tmp_path, guides):
    """Lumina-mGPT guides from the image alone: its default cfg_scale, with an empty unconditional prompt,
    applies to image-only and interleaved replies alike, and a request's own scale wins. A server whose vLLM
    runs without our scheduler (pipeline parallelism) applies no default and refuses a scale with a 400."""
    from engine.shared.families import LUMINA
    from server.errors import BadRequest

    layout = TokenLayout.from_checkpoint(make_tiny(tmp_path / "lumina", TinySpec(grid=4, codebook_size=64,
                                                                              family="lumina")))
    engine = SimpleNamespace(can_paint=False, layout=layout, guides=guides)
    settings = SimpleNamespace(family=LUMINA)

    def args(modalities, **fields):
        req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "draw"}], modalities=modalities,
                                    **fields)
        options = asyncio.run(chat_options(engine, settings, req))
        return {"cfg_scale": options.cfg_scale, "cfg_uncond_prompt": list(options.uncond_prompt)} if options.guided \
            else {}

    for modalities in (["image"], ["text", "image"]):
        if guides:
            assert args(modalities) == {"cfg_scale": 3.0, "cfg_uncond_prompt": []}
            assert args(modalities, cfg_scale=2.0)["cfg_scale"] == 2.0
        else:
            assert args(modalities) == {}
            with pytest.raises(BadRequest, match="pipeline-parallel-size") as err:
                args(modalities, cfg_scale=2.0)
            assert err.value.param == "cfg_scale"
    assert args(["text"]) == {}
    assert args(["text"]) == {}


def test_the_jacobi_window_reaches_the_engine_as_asked_and_unset_is_the_engines_to_choose(engine):
    """The family's default window applies in the engine, within the budget it started with: the server sends
    only a window the request names."""
    assert _params(engine, ["image"], jacobi_window=4).extra_args["jacobi_window"] == 4
    assert _params(engine, ["text", "image"], jacobi_window=1).extra_args["jacobi_window"] == 1  # 1: off
    assert "jacobi_window" not in _params(engine, ["image"]).extra_args
