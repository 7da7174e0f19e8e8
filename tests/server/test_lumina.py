"""A tiny Lumina-mGPT checkpoint in the layout its authors publish (written by ``make-tiny --family lumina``:
their config and vocabulary, sharded weights, one-row q/k norms, no image-processor config) served through
the CLI: images of the asked, non-square size, token-equal to a transformers reference loop that
enforces Lumina's span rule; image input in its span format; text; its authors' sampling defaults."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
from conftest import MODEL, serve_made_tiny
from lumina_reference import lumina_greedy_image
from PIL import Image
from testimages import data_url, noise_image

from engine.shared.vocab import TokenLayout

GRID = 8  # native 8x8 codes at 2 px per code: 16x16 px; Lumina's patch = 2 codes = 4 px


@pytest.fixture(scope="module")
def lumina(tmp_path_factory):
    yield from serve_made_tiny(tmp_path_factory, "lumina", GRID, 256)


def test_the_checkpoint_is_in_its_authors_layout(lumina):
    """What Alpha-VLLM/Lumina-mGPT-7B-768 holds: shards with an index, tokenizer files, no image-processor
    config, and q/k norms of one row for all heads (their model_parallel_size of 1)."""
    from safetensors import safe_open

    folder = lumina.model_dir
    assert not (folder / "processor_config.json").exists() and not (folder / "preprocessor_config.json").exists()
    assert (folder / "tokenizer.json").exists() and (folder / "tokenizer_config.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_parallel_size"] == 1 and config["architectures"] == ["ChameleonXLLMXForConditionalGeneration"]
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) == 2
    name = "model.layers.0.self_attn.q_norm.weight"
    with safe_open(folder / weight_map[name], "pt") as shard:
        assert tuple(shard.get_slice(name).get_shape()) == (1, config["hidden_size"] // config["num_attention_heads"])


def png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_non_square_image_token_equal_to_the_reference(lumina):
    resp = lumina.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a red boat"}], modalities=["image"],
        extra_body={"image_size": "12x16", "image_temperature": 0.0, "cfg_scale": 1.0, "return_token_ids": True})
    rows, cols = 16 // 2, 12 // 2
    assert resp.choices[0].token_ids == lumina_greedy_image(lumina.model_dir, resp.prompt_token_ids, rows, cols)
    assert len(resp.choices[0].token_ids) == 3 + rows * (cols + 1) + 1
    [part] = resp.choices[0].message.content
    assert png_size(part["image_url"]["url"].split(",", 1)[1]) == (12, 16)


def test_guided_image_equals_the_authors_guidance(lumina):
    """Lumina's default guidance (3.0) from the image alone, as its authors run it: the unconditional sequence
    is the image from its BOI on, without the prompt."""
    resp = lumina.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a blue house"}], modalities=["image"],
        extra_body={"image_size": "20x8", "image_temperature": 0.0, "return_token_ids": True})
    reference = lumina_greedy_image(lumina.model_dir, resp.prompt_token_ids, 4, 10, cfg_scale=3.0)
    assert resp.choices[0].token_ids == reference
    assert reference != lumina_greedy_image(lumina.model_dir, resp.prompt_token_ids, 4, 10)


def test_images_route_sizes(lumina):
    client = lumina.client()
    wide = client.images.generate(model=MODEL, prompt="a lighthouse", size="32x8", n=2)
    assert [png_size(d.b64_json) for d in wide.data] == [(32, 8), (32, 8)]
    assert png_size(client.images.generate(model=MODEL, prompt="a lighthouse").data[0].b64_json) == (16, 16)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="a lighthouse", size="1024x1024")
    assert info.value.body["param"] == "size" and "16x16, 32x8" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="12x16"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], modalities=["image"],
                                       extra_body={"image_size": "13x16"})
    tall = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                          modalities=["image"], extra_body={"image_size": "8x24"})
    assert png_size(tall.choices[0].message.content[0]["image_url"]["url"].split(",", 1)[1]) == (8, 24)


def test_image_input_in_lumina_span_format_and_text_output(lumina):
    layout = TokenLayout.from_checkpoint(lumina.model_dir)
    eol, (height, width) = layout.span.eol, layout.span.prefix((GRID, GRID))
    resp = lumina.client().chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, extra_body={"return_token_ids": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": data_url(noise_image(3))}}]}])
    prompt = resp.prompt_token_ids
    start = prompt.index(layout.boi)
    span = prompt[start:start + 3 + GRID * (GRID + 1) + 1]
    assert span[:3] == [layout.boi, height, width] and span[-1] == layout.eoi
    rows = [span[3 + r * (GRID + 1): 3 + (r + 1) * (GRID + 1)] for r in range(GRID)]
    assert all(row[-1] == eol and all(t in layout.code_of for t in row[:-1]) for row in rows)
    assert isinstance(resp.choices[0].message.content, str)
    assert not any(layout.is_span_token(t) for t in resp.choices[0].token_ids)


def test_authors_defaults_apply_and_requests_override_them(lumina):
    client = lumina.client()

    def image_ids(**fields) -> list[int]:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a cat"}], modalities=["image"], seed=7,
            extra_body={"return_token_ids": True, **fields}).choices[0].token_ids

    before = lumina.metric("chameleon:guided_requests_total")
    default = image_ids()
    assert lumina.metric("chameleon:guided_requests_total") == before + 1  # Lumina's cfg 3.0 by default
    assert default == image_ids(cfg_scale=3.0, image_temperature=1.0, image_top_k=2000, image_top_p=1.0)
    assert default != image_ids(cfg_scale=1.0, image_temperature=0.7, image_top_k=0, image_top_p=0.9)
    assert lumina.metric("chameleon:guided_requests_total") == before + 2


def test_responses_image_tool_size(lumina):
    client = lumina.client()
    reply = client.responses.create(model=MODEL, input="a lighthouse", tool_choice={"type": "image_generation"},
                                    tools=[{"type": "image_generation", "size": "32x8"}])
    [item] = reply.output
    assert item.type == "image_generation_call" and png_size(item.result) == (32, 8)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="a lighthouse", tools=[{"type": "image_generation", "size": "9x9"}])
    assert info.value.body["param"] == "tools[0].size" and "16x16, 32x8" in info.value.body["message"]


def test_responses_take_the_familys_defaults_as_chat_does(lumina):
    """/v1/responses builds its request the way chat does: Lumina-mGPT's guidance (cfg 3.0) and text top-k
    (10) apply where the request sets none, so the same seed gives the same image and the same text."""
    client = lumina.client()
    before = lumina.metric("chameleon:guided_requests_total")
    reply = client.responses.create(model=MODEL, input="a cat", tool_choice={"type": "image_generation"},
                                    tools=[{"type": "image_generation"}], extra_body={"seed": 7})
    assert lumina.metric("chameleon:guided_requests_total") == before + 1
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a cat"}],
                                          modalities=["image"], seed=7)
    assert reply.output[0].result == chat.choices[0].message.content[0]["image_url"]["url"].split(",", 1)[1]

    def chat_text(**fields) -> str:
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a cat"}],
                                              seed=3, max_tokens=24, **fields).choices[0].message.content

    text = client.responses.create(model=MODEL, input="a cat", max_output_tokens=24, extra_body={"seed": 3})
    assert text.output_text == chat_text()
    assert chat_text() != chat_text(extra_body={"top_k": 0})  # the default top-k is what makes them equal
