"""OpenAI's Images API on the tiny checkpoint: streamed generations, edits (multipart, with and without a
mask), output formats, and their errors, each body and event checked against OpenAI's published schemas."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from conftest import API_KEY, MODEL
from openapi_schema import check, sse_events
from PIL import Image
from testimages import noise_image, user_message

from engine.shared.vocab import TokenLayout

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def layout(tiny_dir) -> TokenLayout:
    return TokenLayout.from_checkpoint(tiny_dir)


def test_streamed_generation_sends_previews_then_each_image(server, client, layout):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
        body = http.post("/v1/images/generations", json={"model": MODEL, "prompt": "a red circle", "n": 2,
                                                           "stream": True, "partial_images": 2, "seed": 4}).text
    events = sse_events(body)
    for name, event in events:
        check("ImageGenStreamEvent", event)
        assert name == event["type"]
    completed = [e for _, e in events if e["type"] == "image_generation.completed"]
    partial = [e for _, e in events if e["type"] == "image_generation.partial_image"]
    assert len(completed) == 2 and events[-1][1]["type"] == "image_generation.completed"
    assert partial and {e["partial_image_index"] for e in partial} <= {0, 1}
    assert all(_image(e["b64_json"]).size == (64, 64) for e in completed + partial)
    assert all(e["usage"]["output_tokens"] == layout.span.image_tokens() for e in completed)  # BOI, codes, EOI

    # Seeded: the same image streamed and whole, for a request whose batches are the same each time (one image:
    # the two choices of n = 2 reach the engine as two messages, and the batches decide SJD's windows)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
        body = http.post("/v1/images/generations", json={"model": MODEL, "prompt": "a red circle", "stream": True,
                                                           "partial_images": 1, "seed": 4}).text
    [streamed] = [e["b64_json"] for _, e in sse_events(body) if e["type"] == "image_generation.completed"]
    whole = client.images.generate(model=MODEL, prompt="a red circle", extra_body={"seed": 4})
    assert whole.data[0].b64_json == streamed


def test_greedy_streamed_images_are_the_same_with_and_without_jacobi_windows(server):
    """Windows verified every step (the decided token at the first draft not kept, the bonus row after all kept)
    give a greedy image byte for byte the one written a code a step (``jacobi_window`` 1), and both stream
    previews. Random weights keep next to no greedy draft (one in a 1,025-token span in one run, none in
    another), so several codes a step are shown on a sampled image (test_image_output), not here."""

    def stream(**fields) -> tuple[list[str], str, float, float]:
        """Previews, the final image, and the span steps and span tokens the request's engine steps gave."""
        before = [server.metric(f"chameleon:image_codes_accepted_per_step_{k}") for k in ("count", "sum")]
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
            body = http.post("/v1/images/generations", json={
                "model": MODEL, "prompt": "a green square", "stream": True, "partial_images": 3,
                "image_temperature": 0, **fields}).text
        steps, tokens = (server.metric(f"chameleon:image_codes_accepted_per_step_{k}") - b
                         for k, b in zip(("count", "sum"), before, strict=True))
        events = [e for _, e in sse_events(body)]
        assert events[-1]["type"] == "image_generation.completed"
        return [e["b64_json"] for e in events[:-1]], events[-1]["b64_json"], steps, tokens

    windowed_previews, windowed, _, tokens = stream()  # the family's window, within the server's budget
    one_previews, one_a_step, one_steps, one_tokens = stream(jacobi_window=1)
    assert windowed == one_a_step
    assert tokens == one_tokens == one_steps  # the same span, written one token a step without windows
    assert windowed_previews and one_previews and len(windowed_previews) <= 3


def test_the_openai_client_streams_generations_and_edits(client):
    kinds = [e.type for e in client.images.generate(model=MODEL, prompt="a boat", stream=True, partial_images=2)]
    assert kinds[-1] == "image_generation.completed" and "image_generation.partial_image" in kinds
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 32, 64, 64))  # the bottom half changes
    edit = client.images.edit(model=MODEL, image=("in.png", _png(noise_image(1, (64, 64))), "image/png"),
                              mask=("mask.png", _png(mask), "image/png"), prompt="make it blue", stream=True,
                              partial_images=1)
    kinds = [e.type for e in edit]
    assert kinds[-1] == "image_edit.completed" and set(kinds) <= {"image_edit.partial_image", "image_edit.completed"}


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_output_formats(server, output_format):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
        resp = http.post("/v1/images/generations", json={"model": MODEL, "prompt": "a boat", "output_format":
                                                           output_format, "output_compression": 50})
    assert resp.status_code == 200, resp.text
    check("ImagesResponse", resp.json())
    assert resp.json()["output_format"] == output_format and resp.json()["background"] == "opaque"
    assert _image(resp.json()["data"][0]["b64_json"]).format == output_format.upper()


def test_an_edit_sees_its_images(server, client, layout):
    """The input images are part of the prompt, as image tokens: the usage counts them, and different
    images give different results for the same seed."""
    def edit(seed_image: int):
        return client.images.edit(model=MODEL, image=[("a.png", _png(noise_image(seed_image, (64, 64))), "image/png"),
                                                      ("b.png", _png(noise_image(9)), "image/png")],
                                  prompt="blend them", extra_body={"seed": 2})

    first, other = edit(1), edit(2)
    check("ImagesResponse", first.model_dump(exclude_none=True))
    assert first.usage.input_tokens_details.image_tokens == 2 * layout.span.image_tokens()
    assert first.data[0].b64_json != other.data[0].b64_json


def test_a_masked_edit_keeps_every_code_outside_the_mask(server, client, layout):
    image = noise_image(5, (64, 64))
    prompt = client.chat.completions.create(model=MODEL, messages=[user_message("x", [image])], max_tokens=1,
                                            extra_body={"return_token_ids": True}).prompt_token_ids
    boi = prompt.index(layout.boi)
    codes = np.array(prompt[boi + 1:boi + 1 + 32 * 32]).reshape(32, 32)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 20))  # the top-left: 16 cells across, 10 rows down (2 px a cell)
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
        resp = http.post("/v1/images/edits", files=[("image", ("in.png", _png(image), "image/png")),
                                                    ("mask", ("mask.png", _png(mask), "image/png"))],
                         data={"prompt": "change the corner", "return_token_ids": "true", "seed": "3"})
    assert resp.status_code == 200, resp.text
    check("ImagesResponse", resp.json())
    written = np.array(resp.json()["data"][0]["token_ids"][1:1 + 32 * 32]).reshape(32, 32)
    editable = np.zeros((32, 32), dtype=bool)
    editable[:10, :16] = True
    assert (written[~editable] == codes[~editable]).all()
    assert (written[editable] != codes[editable]).any()


@pytest.mark.parametrize(("path", "fields", "param"), [
    ("/v1/images/generations", {"partial_images": 2}, "partial_images"),
    ("/v1/images/generations", {"background": "transparent"}, "background"),
    ("/v1/images/generations", {"output_compression": 101}, "output_compression"),
])
def test_bad_fields_are_400(server, path, fields, param):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
        resp = http.post(path, json={"model": MODEL, "prompt": "a boat", **fields})
    assert resp.status_code == 400, resp.text
    check("ErrorResponse", resp.json())
    assert param in resp.json()["error"]["message"]


def test_bad_edit_files_are_400(server, client):
    with pytest.raises(openai.BadRequestError):  # not an image: chat's decoding check
        client.images.edit(model=MODEL, image=("x.png", b"not a picture", "image/png"), prompt="p")
    with pytest.raises(openai.BadRequestError) as err:  # a mask of another size
        client.images.edit(model=MODEL, image=("x.png", _png(noise_image(1, (64, 64))), "image/png"), prompt="p",
                           mask=("m.png", _png(Image.new("RGBA", (32, 32))), "image/png"))
    assert err.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as err:  # a mask without alpha
        client.images.edit(model=MODEL, image=("x.png", _png(noise_image(1, (64, 64))), "image/png"), prompt="p",
                           mask=("m.png", _png(Image.new("RGB", (64, 64))), "image/png"))
    assert "alpha" in err.value.body["message"]
    small = _png(noise_image(1, (8, 8)))
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
        bomb = http.post("/v1/images/edits", files=[("image", ("big.png", _png(Image.new("RGB", (5000, 5000))),
                                                               "image/png"))], data={"prompt": "p"})
        none = http.post("/v1/images/edits", data={"prompt": "p"}, files=[("other", ("a.txt", b"x", "text/plain"))])
        many = http.post("/v1/images/edits", data={"prompt": "p"},
                         files=[("image[]", (f"{i}.png", small, "image/png")) for i in range(9)])
        huge = http.post("/v1/images/edits", data={"prompt": "p"},
                         files=[("image", ("huge.png", small + b"\0" * (33 * 2**20), "image/png"))])
    assert bomb.status_code == 400 and "pixels" in bomb.json()["error"]["message"]
    assert none.status_code == 400 and none.json()["error"]["param"] == "image"
    assert many.status_code == 400 and "at most 8 images" in many.json()["error"]["message"]  # the server's limit
    assert huge.status_code == 413  # over --max-body-bytes, refused before the body is read
    for resp in (bomb, none, many, huge):
        check("ErrorResponse", resp.json())


def test_the_responses_image_tool_takes_the_output_fields(client):
    tool = {"type": "image_generation", "output_format": "webp", "output_compression": 40}
    reply = client.responses.create(model=MODEL, input="a boat", tool_choice={"type": "image_generation"},
                                    tools=[tool])
    assert _image(reply.output[0].result).format == "WEBP"
    with pytest.raises(openai.BadRequestError, match="transparent"):
        client.responses.create(model=MODEL, input="a boat", tools=[{"type": "image_generation",
                                                                     "background": "transparent"}])


def test_streamed_edit_events_fit_the_schema(server):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=300) as http:
        body = http.post("/v1/images/edits", files=[("image", ("in.png", _png(noise_image(3, (64, 64))), "image/png"))],
                         data={"prompt": "darker", "stream": "true", "partial_images": "1", "output_format": "jpeg",
                               "output_compression": "80"}).text
    events = sse_events(body)
    for name, event in events:
        check("ImageEditStreamEvent", event)
        assert name == event["type"] and event["output_format"] == "jpeg"
    assert events[-1][1]["type"] == "image_edit.completed"
    assert _image(events[-1][1]["b64_json"]).format == "JPEG"
