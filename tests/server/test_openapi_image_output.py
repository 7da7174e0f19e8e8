"""The chat reply's image shapes (`image_output_format`), whole and streamed, each checked against the other,
against OpenAI's schema where the shape is inside it, and through the official client with strict validation."""

from __future__ import annotations

import base64
import re

import httpx
import pytest
from conftest import API_KEY, MODEL
from openapi_schema import check, sse_events

from engine.shared.vocab import TokenLayout

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MARKDOWN_IMAGE = re.compile(r"!\[image (\d+)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)")


@pytest.fixture(scope="module")
def interleaved(tiny_dir) -> dict:
    """A request whose reply holds text and images: BOI is nudged with logit_bias (an OpenAI field)."""
    layout = TokenLayout.from_checkpoint(tiny_dir)
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell and show."}],
            "modalities": ["text", "image"], "seed": 5, "temperature": 1.0,
            "max_tokens": 2 * layout.image_seq_length + 60, "logit_bias": {str(layout.boi): 9.0}}


def _png(url: str) -> bytes:
    assert url.startswith("data:image/png;base64,")
    return base64.b64decode(url.split(",", 1)[1], validate=True)


def _whole(server, body: dict) -> dict:
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=600)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _chunks(server, body: dict) -> list[dict]:
    resp = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True}, headers=AUTH, timeout=600)
    assert resp.status_code == 200, resp.text
    return [e for _, e in sse_events(resp.text)]


def _ordered_pieces(parts: list[dict]) -> list[str | bytes]:
    return [p["text"] if p["type"] == "text" else _png(p["image_url"]["url"]) for p in parts]


def _split_markdown(content: str) -> list[str | bytes]:
    pieces: list[str | bytes] = []
    at = 0
    for number, m in enumerate(MARKDOWN_IMAGE.finditer(content), start=1):
        assert int(m.group(1)) == number
        pieces += [content[at:m.start()], _png(m.group(2))]
        at = m.end()
    return [p for p in [*pieces, content[at:]] if p != ""]


def test_content_parts_is_the_default(server, interleaved):
    """The ordered part list: the one shape that keeps text and images in order (outside the schema)."""
    whole = _whole(server, interleaved)["choices"][0]["message"]
    assert isinstance(whole["content"], list) and "images" not in whole
    expected = _ordered_pieces(whole["content"])
    assert any(isinstance(p, bytes) for p in expected) and any(isinstance(p, str) for p in expected)
    streamed: list[str | bytes] = []
    for chunk in _chunks(server, {**interleaved, "image_output_format": "content_parts"}):
        for choice in chunk["choices"]:
            content = choice["delta"].get("content")
            if isinstance(content, list):
                streamed += _ordered_pieces(content)
            elif content:
                streamed += [streamed.pop() + content] if streamed and isinstance(streamed[-1], str) else [content]
    assert streamed == expected


def test_openrouter(server, interleaved):
    body = {**interleaved, "image_output_format": "openrouter"}
    reply = _whole(server, body)
    check("CreateChatCompletionResponse", reply)
    message = reply["choices"][0]["message"]
    images = [_png(p["image_url"]["url"]) for p in message["images"]]
    assert isinstance(message["content"], str) and images
    chunks = _chunks(server, body)
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["delta"] for chunk in chunks for c in chunk["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    assert [_png(p["image_url"]["url"]) for d in deltas for p in d.get("images", [])] == images


def test_markdown(server, interleaved):
    body = {**interleaved, "image_output_format": "markdown"}
    reply = _whole(server, body)
    check("CreateChatCompletionResponse", reply)
    content = reply["choices"][0]["message"]["content"]
    pieces = _split_markdown(content)
    assert any(isinstance(p, bytes) for p in pieces) and "images" not in reply["choices"][0]["message"]
    chunks = _chunks(server, body)
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]) == content


@pytest.mark.parametrize("shape", ["openrouter", "markdown"])
def test_strict_client_reads_image_replies(server, shape):
    """`_strict_response_validation=True` validates every body against the SDK's own types."""
    client = server.client(_strict_response_validation=True)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Draw."}], modalities=["image"], seed=3,
              extra_body={"image_output_format": shape})
    reply = client.chat.completions.create(**kw)
    message = reply.choices[0].message
    if shape == "openrouter":
        assert message.content == "" and len(message.images) == 1
        png = _png(message.images[0]["image_url"]["url"])
    else:
        [piece] = _split_markdown(message.content)
        png = piece
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == (message.content if shape == "markdown" else "")
    assert png.startswith(b"\x89PNG")


def test_unknown_shape_is_a_400(server):
    resp = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "image_output_format": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "image_output_format"
