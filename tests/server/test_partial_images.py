"""Progressive previews (`stream_options.partial_images`) over HTTP with the official client, tiny checkpoint."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from conftest import API_KEY, MODEL
from PIL import Image

from engine.frontend.vqgan import VQGANConfig
from engine.shared.vocab import TokenLayout

DRAW = [{"role": "user", "content": "Draw a red circle on a white background."}]
GREY = (128, 128, 128)  # pixels_to_uint8 of 0.0, the preview's fill below the known rows


@pytest.fixture(scope="module")
def resolution(tiny_dir) -> int:
    return VQGANConfig.from_meta_yaml(tiny_dir / "vqgan.yaml").resolution


def _image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "PNG"
    return image.convert("RGB")


def _kind(piece) -> str:
    return piece[0] if isinstance(piece, tuple) else "text"


def _joined(pieces: list) -> list:
    """``pieces`` with each run of text deltas as one string: where a stream splits its text depends on how
    many tokens the engine's outputs hold when the server reads them, which timing decides."""
    joined: list = []
    for piece in pieces:
        if _kind(piece) == "text" and joined and _kind(joined[-1]) == "text":
            joined[-1] += piece
        else:
            joined.append(piece)
    return joined


def _stream(client, partial_images: int, **kw) -> list:
    """The stream's pieces in order: text, ("partial", index, url) and ("final", url)."""
    pieces: list = []
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw,
                                                stream_options={"partial_images": partial_images}):
        content = chunk.choices[0].delta.content if chunk.choices else None
        if isinstance(content, list):
            [part] = content
            url = part["image_url"]["url"]
            pieces.append(("partial", part["partial_index"], url) if part.get("partial") else ("final", url))
        elif content:
            pieces.append(content)
    return pieces


def test_previews_come_before_the_final_image_which_is_unchanged(client, resolution):
    kw = dict(messages=DRAW, modalities=["image"], seed=11)
    plain = _stream(client, 0, **kw)
    assert list(map(_kind, plain)) == ["final"]
    pieces = _stream(client, 3, **kw)
    partial = [p for p in pieces if _kind(p) == "partial"]
    assert 1 <= len(partial) <= 3 and pieces[-1] == plain[-1]  # same seed: the same final PNG, last
    assert [p[1] for p in partial] == list(range(len(partial)))
    for _, _, url in partial:
        preview = _image(url)
        assert preview.size == (resolution, resolution)
        assert preview.getpixel((resolution // 2, resolution - 1)) == GREY  # not yet written: the bottom row
    first = _image(partial[0][2])
    assert any(first.getpixel((x, 0)) != GREY for x in range(resolution))  # its top rows are drawn already


def test_previews_of_each_image_in_interleaved_text(client, tiny_dir):
    """BOI nudged with logit_bias so the random model writes text and images; text and finals match K=0."""
    layout = TokenLayout.from_checkpoint(tiny_dir)
    kw = dict(messages=[{"role": "user", "content": "Tell and show."}], modalities=["text", "image"], seed=5,
              max_tokens=2 * layout.image_seq_length + 60, logit_bias={str(layout.boi): 9.0})
    plain = _stream(client, 0, **kw)
    pieces = _stream(client, 2, **kw)
    assert _joined([p for p in pieces if _kind(p) != "partial"]) == _joined(plain)
    finals = [i for i, p in enumerate(pieces) if _kind(p) == "final"]
    assert finals and "text" in map(_kind, pieces) and "partial" in map(_kind, pieces)
    start = 0
    for end in finals:  # each image's previews sit right before it, numbered from 0, at most 2
        indices = [p[1] for p in pieces[start:end] if _kind(p) == "partial"]
        assert indices == list(range(len(indices))) and len(indices) <= 2
        start = end + 1


@pytest.mark.parametrize("body", [
    {"stream": True, "stream_options": {"partial_images": 4}},
    {"stream": True, "stream_options": {"partial_images": -1}},
    {"stream": True, "stream_options": {"partial_images": "many"}},
    {"stream": False, "stream_options": {"partial_images": 1}},
])
def test_bad_partial_images(server, body):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{server.url}/v1/chat/completions"
    resp = httpx.post(url, headers=headers, json={"model": MODEL, "messages": DRAW, "modalities": ["image"], **body},
                      timeout=60)
    assert resp.status_code == 400, resp.text
    assert "partial_images" in resp.json()["error"]["message"]
    ok = httpx.post(url, headers=headers, timeout=60, json={"model": MODEL, "messages": DRAW, "max_tokens": 3,
                                                            "stream": True, "stream_options": {"partial_images": 3}})
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")
