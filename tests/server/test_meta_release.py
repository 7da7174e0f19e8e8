"""Meta's original release layout served directly: converted once into the cache, then greedy parity with
transformers on the converted checkpoint (text, and an image in), and image output with its VQGAN. The release
is named as GAIR's Anole is (which ships in this layout), so it is also served as Anole, with Anole's defaults."""

from __future__ import annotations

import base64
import io

import pytest
from conftest import MODEL, start_server, stop_server
from oracle import HFOracle
from PIL import Image
from testimages import noise_image, user_message

from engine.offline.tiny import TinySpec, make_tiny_meta

SPEC = TinySpec(grid=8, codebook_size=256, swin_norm=True)
GUIDED = "chameleon:guided_requests_total"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    meta = make_tiny_meta(tmp_path_factory.mktemp("meta") / "Anole-7b-v0.1", SPEC, shards=2)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHAMELEON_CACHE", str(cache))
        live = start_server(meta, tmp_path_factory.mktemp("meta-logs") / "server.log")
    [converted] = (cache / "converted").iterdir()
    yield live, HFOracle(converted)
    stop_server(live)


@pytest.mark.parametrize("n_images", [0, 1])
def test_meta_release_greedy_parity(release, n_images):
    live, oracle = release
    images = [noise_image(20 + i) for i in range(n_images)]
    text = "What is in the picture?"
    resp = live.client().chat.completions.create(
        model=MODEL, messages=[user_message(text, images)], temperature=0, max_tokens=12,
        extra_body={"return_token_ids": True})
    assert resp.prompt_token_ids == oracle.prompt_ids(text, images)
    assert resp.choices[0].token_ids == oracle.greedy(text, images, 12)
    assert "converting the Meta-layout release" in live.log() and "swin_norm=True" in live.log()


def test_meta_release_writes_images(release):
    live, _ = release
    resp = live.client().images.generate(model=MODEL, prompt="a boat", n=1, response_format="b64_json")
    png = base64.b64decode(resp.data[0].b64_json)
    assert Image.open(io.BytesIO(png)).size == (SPEC.resolution, SPEC.resolution)


def test_anole_is_recognized_and_its_defaults_apply_unless_a_request_overrides_them(release):
    live, _ = release
    client = live.client()

    def image_ids(**fields) -> list[int]:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a dog"}], modalities=["image"], seed=3,
            extra_body={"return_token_ids": True, **fields}).choices[0].token_ids

    assert "checkpoint family anole" in live.log()
    before = live.metric(GUIDED)
    default = image_ids()
    assert live.metric(GUIDED) == before + 1  # Anole's guidance at 3.0 by default
    assert default == image_ids(cfg_scale=3.0, image_temperature=0.7, image_top_p=0.9)
    assert default != image_ids(cfg_scale=1.0)
    assert live.metric(GUIDED) == before + 2


def test_anole_responses_are_guided_by_default_as_chat_is(release):
    """/v1/responses and /v1/images/generations take the same serving path as chat: Anole's default guidance
    applies, so the same seed gives the same image codes on each route."""
    live, _ = release
    client = live.client()
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a dog"}],
                                          modalities=["image"], seed=5)
    chat_png = chat.choices[0].message.content[0]["image_url"]["url"].split(",", 1)[1]
    before = live.metric(GUIDED)
    reply = client.responses.create(model=MODEL, input="a dog", tool_choice={"type": "image_generation"},
                                    tools=[{"type": "image_generation"}], extra_body={"seed": 5})
    assert live.metric(GUIDED) == before + 1
    assert reply.output[0].result == chat_png
    images = client.images.generate(model=MODEL, prompt="a dog", n=1, response_format="b64_json",
                                    extra_body={"seed": 5})
    assert live.metric(GUIDED) == before + 2
    assert images.data[0].b64_json == chat_png
