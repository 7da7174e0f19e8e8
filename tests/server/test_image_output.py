"""The model writes images: grammar-exact spans, PNGs of the VQGAN's size, streamed or whole, beside text traffic."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import pytest
from conftest import API_KEY, MODEL
from PIL import Image

from engine.frontend.vqgan import VQGANConfig
from engine.shared.vocab import TokenLayout

DRAW = [{"role": "user", "content": "Draw a red circle on a white background."}]


@pytest.fixture(scope="module")
def layout(tiny_dir) -> TokenLayout:
    return TokenLayout.from_checkpoint(tiny_dir)


@pytest.fixture(scope="module")
def resolution(tiny_dir) -> int:
    return VQGANConfig.from_meta_yaml(tiny_dir / "vqgan.yaml").resolution


def _png_of(url: str) -> bytes:
    assert url.startswith("data:image/png;base64,")
    return base64.b64decode(url.split(",", 1)[1])


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_image_only_returns_one_exact_span(client, layout, resolution, server):
    before = server.metric("chameleon:images_generated_total")
    steps_before = _image_steps(server)
    resp = client.chat.completions.create(model=MODEL, messages=DRAW, modalities=["image"], seed=7,
                                          extra_body={"return_token_ids": True})
    choice = resp.choices[0]
    ids = choice.token_ids
    assert ids[0] == layout.boi and ids[-1] == layout.eoi and len(ids) == layout.image_seq_length + 2
    assert all(t in layout.code_of for t in ids[1:-1])
    assert choice.finish_reason == "stop"
    [part] = choice.message.content
    assert part["type"] == "image_url" and _size(_png_of(part["image_url"]["url"])) == (resolution, resolution)
    assert resp.usage.completion_tokens_details.image_tokens == layout.image_seq_length + 2
    assert server.metric("chameleon:images_generated_total") == before + 1
    images, passes, steps, tokens = (b - a for a, b in zip(steps_before, _image_steps(server), strict=True))
    # 1,024 codes + EOI, in as many engine steps as the image took (fewer than its tokens: SJD is on by default)
    assert images == 1 and tokens == layout.image_seq_length + 1 and steps == passes < tokens


def _image_steps(server) -> tuple[float, ...]:
    """Images counted, their engine steps, span steps observed and the span tokens those steps gave."""
    return (server.metric("chameleon:image_forward_passes_count"), server.metric("chameleon:image_forward_passes_sum"),
            server.metric("chameleon:image_codes_accepted_per_step_count"),
            server.metric("chameleon:image_codes_accepted_per_step_sum"))


def test_stream_and_whole_give_the_same_image(client):
    kw = dict(model=MODEL, messages=DRAW, modalities=["image"], seed=123, extra_body={"image_temperature": 1.0})
    whole = _png_of(client.chat.completions.create(**kw).choices[0].message.content[0]["image_url"]["url"])
    chunks = list(client.chat.completions.create(**kw, stream=True))
    parts = [p for c in chunks if c.choices and isinstance(c.choices[0].delta.content, list)
             for p in c.choices[0].delta.content]
    assert len(parts) == 1 and _png_of(parts[0]["image_url"]["url"]) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    other = client.chat.completions.create(**{**kw, "seed": 124})
    assert _png_of(other.choices[0].message.content[0]["image_url"]["url"]) != whole


def test_images_generate(client, resolution):
    result = client.images.generate(model=MODEL, prompt="a lighthouse at night", n=2, response_format="b64_json")
    assert len(result.data) == 2
    for image in result.data:
        assert _size(base64.b64decode(image.b64_json)) == (resolution, resolution)
    same_size = client.images.generate(prompt="x", size=f"{resolution}x{resolution}")
    assert len(same_size.data) == 1


def test_mixed_batch_text_requests_never_see_image_tokens(server, layout):
    async def run():
        aclient = server.async_client()
        texts = [aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Say {i}"}],
                                                 temperature=1.5, max_tokens=48, extra_body={"return_token_ids": True})
                 for i in range(6)]
        images = [aclient.chat.completions.create(model=MODEL, messages=DRAW, modalities=["image"], seed=i,
                                                  extra_body={"return_token_ids": True}) for i in range(3)]
        return await asyncio.gather(*texts), await asyncio.gather(*images)

    texts, images = asyncio.run(run())
    for r in texts:
        assert not any(layout.is_span_token(t) for t in r.choices[0].token_ids)
        assert isinstance(r.choices[0].message.content, str)
    for r in images:
        ids = r.choices[0].token_ids
        assert ids[0] == layout.boi and ids[-1] == layout.eoi and len(ids) == layout.image_seq_length + 2


def test_abort_mid_image_frees_the_request(server, layout):
    generated_before = server.metric("vllm:generation_tokens_total")
    body = {"model": MODEL, "messages": DRAW, "modalities": ["image"], "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status_code == 200
        next(resp.iter_lines())  # the role chunk: the request is running
    deadline = time.monotonic() + 30
    while server.metric("vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("vllm:generation_tokens_total") - generated_before < layout.image_seq_length


@pytest.mark.parametrize("body,param", [
    ({"modalities": ["audio"]}, "modalities"),
    ({"modalities": []}, "modalities"),
    ({"modalities": ["image"], "image_temperature": -1}, "image_temperature"),
    ({"modalities": ["image"], "image_top_p": 0}, "image_top_p"),
    ({"modalities": ["image"], "image_top_k": -5}, "image_top_k"),
    ({"modalities": ["image"], "jacobi_window": 0}, "jacobi_window"),
    ({"modalities": ["image"], "jacobi_window": True}, "jacobi_window"),
    ({"modalities": ["image", "image"]}, None),
])
def test_bad_image_params(server, body, param):
    resp = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": MODEL, "messages": DRAW, **body}, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["message"] and (param is None or param in (error["param"] or ""))


@pytest.mark.parametrize("body", [{"size": "13x13"}, {"response_format": "url"}, {"n": 0}, {"prompt": ""},
                                  {"jacobi_window": 17}])
def test_bad_images_requests(server, body):
    resp = httpx.post(f"{server.url}/v1/images/generations", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"prompt": "a cat", **body}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]


def _pieces_of_stream(chunks) -> list[str | bytes]:
    pieces: list[str | bytes] = []
    for c in chunks:
        if not c.choices or not c.choices[0].delta.content:
            continue
        content = c.choices[0].delta.content
        if isinstance(content, list):
            pieces += [_png_of(p["image_url"]["url"]) for p in content]
        elif pieces and isinstance(pieces[-1], str):
            pieces[-1] += content
        else:
            pieces.append(content)
    return pieces


def test_interleaved_text_and_images_stream_in_order(client, layout):
    """BOI is nudged with logit_bias (an OpenAI field) so this random model writes images between text."""
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell and show."}], modalities=["text", "image"],
              seed=5, temperature=1.0, max_tokens=2 * layout.image_seq_length + 60,
              logit_bias={str(layout.boi): 9.0})
    whole = client.chat.completions.create(**kw, extra_body={"return_token_ids": True})
    content = whole.choices[0].message.content
    expected = [_png_of(p["image_url"]["url"]) if p["type"] == "image_url" else p["text"] for p in content]
    assert any(isinstance(p, bytes) for p in expected) and any(isinstance(p, str) for p in expected)
    assert _pieces_of_stream(client.chat.completions.create(**kw, stream=True)) == expected
    ids = whole.choices[0].token_ids
    for start in [i for i, t in enumerate(ids) if t == layout.boi]:  # every span is exact, or cut by max_tokens
        span = ids[start + 1:start + 2 + layout.image_seq_length]
        complete = len(span) == layout.image_seq_length + 1
        assert all(t in layout.code_of for t in span[:layout.image_seq_length])
        assert not complete or span[-1] == layout.eoi
    images_in_ids = sum(1 for i, t in enumerate(ids) if t == layout.eoi)
    assert sum(isinstance(p, bytes) for p in expected) == images_in_ids


def test_stop_strings_do_not_match_inside_images(client, layout):
    """Codes are vocabulary entries named IMGIMG...Z; a stop string must see the reply's text, not their names."""
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell and show."}], modalities=["text", "image"],
              seed=5, temperature=1.0, max_tokens=layout.image_seq_length + 40, logit_bias={str(layout.boi): 9.0},
              extra_body={"return_token_ids": True})
    free = client.chat.completions.create(**kw).choices[0]
    stopped = client.chat.completions.create(**kw, stop=["IMGIMG", "Z"]).choices[0]
    assert layout.eoi in free.token_ids  # a whole image was written
    text = "".join(p["text"] for p in free.message.content if p["type"] == "text")
    assert "IMGIMG" not in text and "Z" not in text  # so no stop string can match this reply
    assert stopped.token_ids == free.token_ids and stopped.message.content == free.message.content
    stream_kw = {k: v for k, v in kw.items() if k != "extra_body"}
    expected = [_png_of(p["image_url"]["url"]) if p["type"] == "image_url" else p["text"] for p in free.message.content]
    assert _pieces_of_stream(client.chat.completions.create(**stream_kw, stop=["IMGIMG", "Z"], stream=True)) == expected


def test_an_image_only_reply_ignores_stop_strings(client):
    """An image-only reply has no text for a stop string to match: the same image with and without one."""
    kw = dict(model=MODEL, messages=DRAW, modalities=["image"], seed=11, extra_body={"return_token_ids": True})
    free = client.chat.completions.create(**kw).choices[0]
    stopped = client.chat.completions.create(**kw, stop=["Z", "A"]).choices[0]
    assert stopped.token_ids == free.token_ids and stopped.finish_reason == free.finish_reason == "stop"
    assert stopped.message.content == free.message.content


def test_max_tokens_inside_a_span_gives_no_broken_image(client):
    resp = client.chat.completions.create(model=MODEL, messages=DRAW, modalities=["image"], max_tokens=10)
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == ""  # no partial PNG
