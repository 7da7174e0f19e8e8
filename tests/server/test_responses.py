"""`POST /v1/responses` through the official openai client, unmodified: items in order, streaming, image tools."""

from __future__ import annotations

import base64
import io
import itertools

import openai
import pytest
from conftest import MODEL
from PIL import Image
from testimages import data_url, noise_image

from engine.frontend.vqgan import VQGANConfig
from engine.shared.vocab import TokenLayout

IMAGE_TOOL = [{"type": "image_generation", "partial_images": 2}]  # previews in streams only
FORCE_IMAGE = {"type": "image_generation"}


@pytest.fixture(scope="module")
def layout(tiny_dir) -> TokenLayout:
    return TokenLayout.from_checkpoint(tiny_dir)


@pytest.fixture(scope="module")
def strict(server) -> openai.OpenAI:
    return server.client(_strict_response_validation=True)


@pytest.fixture(scope="module")
def interleaved(layout) -> dict:
    """Text and images from the random model: BOI nudged through the logit_bias extension, as on chat."""
    return dict(model=MODEL, input="Tell and show.", tools=IMAGE_TOOL, max_output_tokens=layout.image_seq_length + 60,
                temperature=1.0, extra_body={"seed": 5, "logit_bias": {str(layout.boi): 9.0}})


def _png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def _pieces(output) -> list[tuple[str, str]]:
    """(kind, text or base64 PNG) for each output item, ids left out."""
    return [("text", "".join(c.text for c in o.content)) if o.type == "message" else ("image", o.result)
            for o in output]


def test_text_from_string_and_messages(strict, tiny_dir):
    reply = strict.responses.create(model=MODEL, input="Hello", instructions="Answer briefly.", max_output_tokens=6,
                                    store=True)
    assert reply.status in ("completed", "incomplete") and reply.output[0].type == "message"
    assert reply.output_text == reply.output[0].content[0].text and reply.usage.output_tokens <= 6
    assert reply.model_extra["store"] is False  # accepted, never stored
    image = noise_image(3)
    with_image = strict.responses.create(model=MODEL, max_output_tokens=4, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": data_url(image)}]}])
    grid = TokenLayout.from_checkpoint(tiny_dir).image_seq_length
    assert with_image.usage.input_tokens > grid + 2 > reply.usage.input_tokens


def test_forced_image_create_and_stream_agree(strict, tiny_dir, layout):
    kw = dict(model=MODEL, input="A red circle.", tools=IMAGE_TOOL, tool_choice=FORCE_IMAGE, extra_body={"seed": 11})
    reply = strict.responses.create(**kw)
    [item] = reply.output
    side = VQGANConfig.from_meta_yaml(tiny_dir / "vqgan.yaml").resolution
    assert item.type == "image_generation_call" and item.status == "completed"
    assert _png_size(item.result) == (side, side) and reply.status == "completed"
    assert reply.usage.output_tokens_details.image_tokens == layout.image_seq_length + 2
    with strict.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    partial = [e for e in events if e.type == "response.image_generation_call.partial_image"]
    assert 1 <= len(partial) <= 2  # a preview that falls due while one is decoding is merged into the next
    assert [e.partial_image_index for e in partial] == list(range(len(partial)))
    assert all(_png_size(e.partial_image_b64) == (side, side) and e.item_id == events[2].item.id for e in partial)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.image_generation_call.in_progress", "response.image_generation_call.generating",
        *["response.image_generation_call.partial_image"] * len(partial),
        "response.image_generation_call.completed", "response.output_item.done", "response.completed"]
    assert _pieces(final.output) == _pieces(reply.output)  # previews change nothing in the final image


def test_interleaved_items_match_chat(strict, server, interleaved):
    """The same request over chat (content parts) and responses (items) gives the same pieces in the same order."""
    reply = strict.responses.create(**interleaved)
    pieces = _pieces(reply.output)
    assert {"text", "image"} <= {kind for kind, _ in pieces}
    assert all(a[0] != b[0] or a[0] == "image" for a, b in itertools.pairwise(pieces))  # text runs are merged
    chat = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell and show."}], modalities=["text", "image"],
        max_tokens=interleaved["max_output_tokens"], temperature=1.0, seed=5,
        logit_bias=interleaved["extra_body"]["logit_bias"])
    parts = chat.choices[0].message.content
    assert pieces == [("text", p["text"]) if p["type"] == "text" else ("image", p["image_url"]["url"].split(",")[1])
                      for p in parts]


def test_interleaved_stream_events(strict, interleaved):
    whole = strict.responses.create(**interleaved)
    events = list(strict.responses.create(**interleaved, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert _pieces(done) == _pieces(whole.output)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(t for kind, t in _pieces(whole.output) if kind == "text")
    assert events[-1].type == f"response.{whole.status}"
    assert _pieces(events[-1].response.output) == _pieces(whole.output)


def test_generated_image_goes_back_as_input(strict, layout):
    first = strict.responses.create(model=MODEL, input="Draw.", tools=IMAGE_TOOL, tool_choice=FORCE_IMAGE,
                                    extra_body={"seed": 2})
    follow = strict.responses.create(model=MODEL, max_output_tokens=2, input=[
        {"role": "user", "content": "Draw."}, first.output[0].model_dump(), {"role": "user", "content": "Again."}])
    assert follow.usage.input_tokens >= first.usage.input_tokens + layout.image_seq_length + 2


@pytest.mark.parametrize("kw,param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tool_choice": FORCE_IMAGE}, None),  # no image_generation tool to choose
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "image_url"),
])
def test_refusals(strict, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        strict.responses.create(**{"model": MODEL, "input": "hi", **kw})
    assert err.value.status_code == 400
    assert param is None or param in (err.value.param or "")
    assert strict.responses.create(model=MODEL, input="hi", max_output_tokens=1).output
