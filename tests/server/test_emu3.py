"""A tiny Emu3 checkpoint (written by ``make-tiny --family emu3`` with transformers' own Emu3 classes in BAAI's
``-hf`` layout, its processor then saved again as today's transformers saves it) served through the CLI,
against transformers as the oracle (``tests/emu3_reference.py``): input images' codes, greedy text after an
image, greedy images (plain and guided) token for token, PNGs to within 1/255, any size its processor writes,
masked edits, and every route and stream on it. Both processor layouts give the same: see
``tests/unit/frontend/test_processor_layouts.py``."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
import torch
from conftest import MODEL, serve_made_tiny
from emu3_reference import decoded_pixels, emu3_model, greedy_image, guided_greedy_image, image_prefix
from PIL import Image
from processor_layouts import as_saved_today
from testimages import data_url, noise_image

from engine.shared.families.emu3 import NEGATIVE_PROMPT, POSITIVE_PROMPT
from engine.shared.vocab import TokenLayout

GRID = 4  # the square default: 4x4 codes, 32x32 px (its image processor takes 256 to 1,024 px)


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    yield from serve_made_tiny(tmp_path_factory, "emu3", GRID, 512, resave=as_saved_today)


@pytest.fixture(scope="module")
def reference(emu3):
    return emu3_model(emu3.model_dir)


@pytest.fixture(scope="module")
def layout(emu3):
    return TokenLayout.from_checkpoint(emu3.model_dir)


def test_transformers_loads_the_checkpoint_unchanged(emu3):
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    _, info = Emu3ForConditionalGeneration.from_pretrained(emu3.model_dir, output_loading_info=True)
    assert not any(info.values()), info
    processor = Emu3Processor.from_pretrained(emu3.model_dir)
    assert processor.fake_token_around_image == "<|image token|>" and processor.eof_token == "<|extra_201|>"
    files = {p.name for p in emu3.model_dir.iterdir()}
    assert {"config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= files
    config = json.loads((emu3.model_dir / "config.json").read_text())
    assert {"text_config", "vq_config", "vocabulary_map"} <= set(config)


def _image_chat(emu3, image, **kw):
    return emu3.client().chat.completions.create(
        model=MODEL, temperature=0, extra_body={"return_token_ids": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": "What is this?"}]}], **kw)


def test_input_image_codes_equal_get_image_tokens(emu3, reference, layout):
    from transformers import Emu3Processor

    image = noise_image(5, size=(40, 30))  # not square: the processor keeps its aspect
    prompt = _image_chat(emu3, image, max_tokens=1).prompt_token_ids
    start = prompt.index(layout.boi)
    span = prompt[start:prompt.index(layout.eoi, start) + 1]
    pixels = Emu3Processor.from_pretrained(emu3.model_dir).image_processor(image, return_tensors="pt")
    expected = reference.model.get_image_tokens(pixels["pixel_values"], pixels["image_sizes"]).tolist()
    rows, cols = (int(s) // 8 for s in pixels["image_sizes"][0])
    assert span == [layout.boi, *image_prefix(emu3.model_dir, rows, cols)[1:], *expected, *layout.span.trailer,
                    layout.eoi]
    assert span[1:][:len(layout.span.prefix((rows, cols)))] == list(layout.span.prefix((rows, cols)))


def test_chat_prompt_is_what_emu3s_processor_feeds_the_model(emu3, reference):
    """The checkpoint's chat template with BOS, as Emu3Processor writes it, and the image's placeholders as the
    model fills them (``get_image_tokens``): the same ids the server puts in the prompt."""
    from transformers import Emu3Processor

    processor = Emu3Processor.from_pretrained(emu3.model_dir)
    image = noise_image(7, size=(32, 32))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    inputs = processor(images=[image], text=[processor.apply_chat_template(chat, add_generation_prompt=True)],
                       return_tensors="pt")
    ids = inputs["input_ids"][0].clone()
    codes = reference.model.get_image_tokens(inputs["pixel_values"], inputs["image_sizes"])
    ids[ids == processor.image_token_id] = codes.long()
    assert _image_chat(emu3, image, max_tokens=1).prompt_token_ids == ids.tolist()


def test_greedy_text_after_an_image_equals_transformers(emu3, reference, layout):
    resp = _image_chat(emu3, noise_image(6), max_tokens=8)
    prompt = resp.prompt_token_ids
    out = reference.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                             suppress_tokens=sorted(layout.span_token_ids()))
    expected = out[0, len(prompt):].tolist()
    assert resp.choices[0].token_ids == expected[:len(resp.choices[0].token_ids)]
    assert len(resp.choices[0].token_ids) == len(expected) or expected[len(resp.choices[0].token_ids) - 1] == layout.sep


def _image_reply(emu3, size: str | None = None, **extra):
    body = {"return_token_ids": True, "image_temperature": 0, "cfg_scale": 1.0, **extra}
    if size:
        body["image_size"] = size
    return emu3.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a red house"}], modalities=["image"], extra_body=body)


def _png(resp) -> Image.Image:
    url = resp.choices[0].message.content[0]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize(("size", "grid"), [(None, (GRID, GRID)), ("40x24", (3, 5)), ("64x16", (2, 8))])
def test_greedy_image_and_png_equal_transformers(emu3, reference, layout, size, grid):
    rows, cols = grid
    resp = _image_reply(emu3, size)
    prompt, written = resp.prompt_token_ids, resp.choices[0].token_ids
    prefix = image_prefix(emu3.model_dir, rows, cols)
    assert written[:len(prefix)] == prefix  # the grammar writes the authors' image prefix
    assert prompt[-1] != layout.sep  # the authors' plain generation prompt: BOS, the text, the positive suffix
    expected = greedy_image(reference, [*prompt, *prefix], rows, cols)
    assert written[len(prefix):] == expected
    ours = torch.from_numpy(np.array(_png(resp).convert("RGB"))).int()
    theirs = decoded_pixels(reference, emu3.model_dir, expected, rows, cols).int()
    assert ours.shape == theirs.shape == (rows * 8, cols * 8, 3)
    assert (ours - theirs).abs().max() <= 1


def test_plain_prompt_carries_the_authors_suffix(emu3):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(emu3.model_dir)
    prompt = _image_reply(emu3).prompt_token_ids
    assert prompt == [tokenizer.bos_token_id, *tokenizer.encode("a red house" + POSITIVE_PROMPT,
                                                                add_special_tokens=False)]
    bare = _image_reply(emu3, image_prompt_suffix="").prompt_token_ids
    assert bare == [tokenizer.bos_token_id, *tokenizer.encode("a red house", add_special_tokens=False)]


@pytest.mark.parametrize("negative", [None, "blurry, dark"])
def test_guided_greedy_image_equals_two_forward_reference(emu3, reference, negative):
    """The family's guidance (cfg 3.0, the authors' negative prompt) and a request's own negative prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(emu3.model_dir)
    body = {"return_token_ids": True, "image_temperature": 0} | ({"negative_prompt": negative} if negative else {})
    resp = emu3.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a red house"}], modalities=["image"], extra_body=body)
    prefix = image_prefix(emu3.model_dir, GRID, GRID)
    uncond = [tokenizer.bos_token_id, *tokenizer.encode(negative or NEGATIVE_PROMPT, add_special_tokens=False),
              *prefix]
    expected = guided_greedy_image(reference, [*resp.prompt_token_ids, *prefix], uncond, GRID, GRID, 3.0)
    written = resp.choices[0].token_ids
    assert written[len(prefix):] == expected
    assert written != _image_reply(emu3).choices[0].token_ids  # guidance changed the image


def test_any_size_the_processor_writes_and_a_400_with_the_rule_outside_it(emu3):
    """Sizes round to whole codes as ``calculate_generate_size`` rounds; the response names what is written."""
    client = emu3.client()
    image = client.images.generate(model=MODEL, prompt="a boat", size="63x17", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json))).size == (64, 16)
    assert image.model_extra["image_size"] == "64x16"
    for size in ["1024x1024", "16x8", "60x60"]:  # too many pixels, too few, and 64x64 > 1,024 px
        with pytest.raises(openai.BadRequestError) as err:
            client.images.generate(model=MODEL, prompt="x", size=size)
        assert "256 to 1024 pixels in all" in str(err.value) and err.value.body["param"] == "size"


def test_images_responses_completions_and_previews(emu3):
    client = emu3.client()
    image = client.images.generate(model=MODEL, prompt="a boat", size="24x40", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json))).size == (24, 40)
    response = client.responses.create(model=MODEL, input="a boat", tools=[{"type": "image_generation"}],
                                       tool_choice={"type": "image_generation"})
    assert any(item.type == "image_generation_call" for item in response.output)
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens >= 1
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a boat"}], modalities=["image"], stream=True,
        stream_options={"partial_images": 2})
    parts = [p for chunk in stream if chunk.choices for p in (chunk.choices[0].delta.content or [])
             if isinstance(p, dict)]
    partial = [p.get("partial", False) for p in parts]
    assert 1 <= sum(partial) <= 2 and partial[-1] is False and partial.count(False) == 1
    assert all(Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).size == (32, 32)
               for p in parts)


def test_text_reply_with_image_has_no_size_text(emu3, layout):
    """An interleaved reply: the image's size prefix is part of the image, never text."""
    resp = emu3.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "draw"}], modalities=["text", "image"], max_tokens=80,
        extra_body={"return_token_ids": True, "logit_bias": {str(layout.boi): 100}, "image_temperature": 0})
    content = resp.choices[0].message.content
    images = [p for p in content if p["type"] == "image_url"]
    texts = "".join(p["text"] for p in content if p["type"] == "text")
    assert images and f"{GRID}*{GRID}" not in texts
    written = resp.choices[0].token_ids
    one = layout.span.image_tokens()  # BOI, the size prefix, rows, EOF, EOI: all the image's
    assert written[one - 1] == layout.eoi and layout.span_mask(written[:one]) == [True] * one
    assert resp.usage.completion_tokens_details.image_tokens == sum(layout.span_mask(written)) >= one


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_edits_without_a_mask(emu3):
    client = emu3.client()
    before = emu3.metric("chameleon:images_generated_total")
    edit = client.images.edit(model=MODEL, image=("in.png", _png_bytes(noise_image(3, size=(32, 32))), "image/png"),
                              prompt="make it red")
    assert Image.open(io.BytesIO(base64.b64decode(edit.data[0].b64_json))).size == (32, 32)
    assert emu3.metric("chameleon:images_generated_total") == before + 1


def test_a_masked_edit_keeps_every_code_outside_the_mask_at_the_images_own_grid(emu3, reference, layout):
    """A 40x24 input stays 40x24 in the processor's range: 3 rows of 5 codes, its own grid, not the default."""
    from transformers import Emu3Processor

    image = noise_image(8, size=(40, 24))
    pixels = Emu3Processor.from_pretrained(emu3.model_dir).image_processor(image, return_tensors="pt")
    ids = reference.model.get_image_tokens(pixels["pixel_values"], pixels["image_sizes"]).tolist()  # rows and EOLs
    codes = np.array([t for t in ids if t in layout.code_of]).reshape(3, 5)
    mask = Image.new("RGBA", (40, 24), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 16, 24))  # the two left columns of codes (8 px each) change
    edit = emu3.client().images.edit(
        model=MODEL, image=("in.png", _png_bytes(image), "image/png"), mask=("mask.png", _png_bytes(mask), "image/png"),
        prompt="change the left", extra_body={"return_token_ids": True, "seed": 5})
    assert Image.open(io.BytesIO(base64.b64decode(edit.data[0].b64_json))).size == (40, 24)
    written = [t for t in edit.data[0].model_extra["token_ids"] if t in layout.code_of]
    written = np.array(written).reshape(3, 5)
    assert (written[:, 2:] == codes[:, 2:]).all()
    assert (written[:, :2] != codes[:, :2]).any()


def test_a_mask_that_cannot_map_is_400(emu3):
    image = noise_image(8, size=(40, 24))
    with pytest.raises(openai.BadRequestError) as err:  # not the image's size
        emu3.client().images.edit(model=MODEL, image=("in.png", _png_bytes(image), "image/png"), prompt="x",
                                  mask=("mask.png", _png_bytes(Image.new("RGBA", (24, 40))), "image/png"))
    assert "the same size" in str(err.value) and err.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as err:  # the edit keeps the image's grid
        emu3.client().images.edit(model=MODEL, image=("in.png", _png_bytes(image), "image/png"), prompt="x",
                                  size="32x32",
                                  mask=("mask.png", _png_bytes(Image.new("RGBA", (40, 24))), "image/png"))
    assert "keeps its input image's size" in str(err.value) and err.value.body["param"] == "size"
    thin = noise_image(8, size=(500, 2))  # beyond the processor's aspect ratio of 200
    with pytest.raises(openai.BadRequestError) as err:
        emu3.client().images.edit(model=MODEL, image=("in.png", _png_bytes(thin), "image/png"), prompt="x",
                                  mask=("mask.png", _png_bytes(Image.new("RGBA", (500, 2))), "image/png"))
    assert "aspect ratio" in str(err.value) and err.value.body["param"] == "mask"
