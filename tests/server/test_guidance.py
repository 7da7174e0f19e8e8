"""Classifier-free guidance over HTTP on the tiny checkpoint: chat and images routes, metrics, abort, the
memory cap."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL, start_server, stop_server
from guidance_reference import guided_image_reference

from engine.offline.tiny import TinySpec

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def prompt_ids(client, text: str) -> list[int]:
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=1,
                                          extra_body={"return_token_ids": True})
    return resp.prompt_token_ids


def test_guided_image_equals_two_forward_reference(server, client):
    before = server.metric("chameleon:guided_requests_total")
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a red boat"}], modalities=["image"],
        extra_body={"cfg_scale": 4.0, "negative_prompt": "blurry", "image_temperature": 0.0,
                    "return_token_ids": True})
    reference = guided_image_reference(server.model_dir, resp.prompt_token_ids, prompt_ids(client, "blurry"), 4.0)
    assert resp.choices[0].token_ids == reference
    assert server.metric("chameleon:guided_requests_total") == before + 1
    assert server.metric("chameleon:guidance_kv_bytes") == 0  # released when done


def test_images_route_takes_guidance(client):
    common = dict(model=MODEL, prompt="a house", response_format="b64_json")
    guided = client.images.generate(**common, n=2, extra_body={"cfg_scale": 3.0, "seed": 5})
    plain = client.images.generate(**common, n=2, extra_body={"seed": 5})
    assert len(guided.data) == 2 and all(g.b64_json != p.b64_json for g, p in zip(guided.data, plain.data))
    # Seeded: reproducible, for a request whose batches are the same each time. The two choices of one request
    # reach the engine as two messages, so the second may join the first's first step or the next one; fp32
    # products over batches of different sizes round differently, and a draw can then land elsewhere.
    once, again = (client.images.generate(**common, extra_body={"cfg_scale": 3.0, "seed": 5}) for _ in range(2))
    assert once.data[0].b64_json == again.data[0].b64_json


def test_dropped_guided_stream_frees_everything(server, client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a tree"}],
                                            modalities=["image"], stream=True, extra_body={"cfg_scale": 2.0})
    next(iter(stream))
    assert server.metric("chameleon:guidance_kv_bytes") > 0
    stream.close()
    for _ in range(100):
        if server.metric("vllm:num_requests_running") == 0 and server.metric("chameleon:guidance_kv_bytes") == 0:
            break
        httpx.get(f"{server.url}/health")
    assert server.metric("chameleon:guidance_kv_bytes") == 0


@pytest.mark.parametrize("body, param", [
    ({"cfg_scale": 2.0}, None),  # text-only modalities
    ({"negative_prompt": "x", "modalities": ["image"]}, "negative_prompt"),
    ({"cfg_scale": 1000.0, "modalities": ["image"]}, "cfg_scale"),
    ({"cfg_scale": "strong", "modalities": ["image"]}, "cfg_scale"),
])
def test_bad_guidance_is_400(client, body, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       extra_body=body)
    error = refused.value.body
    assert error["message"] and (param is None or error["param"] == param)


IMAGE_TOKENS = TinySpec().grid ** 2 + 2  # BOI, codes, EOI


def settle(server, name: str, done) -> float:
    """The metric once ``done(value)`` holds (or after a bounded number of looks)."""
    for _ in range(2000):
        if done(value := server.metric(name)):
            break
        httpx.get(f"{server.url}/health")
    return value


@pytest.fixture(scope="module")
def capped(tiny_dir, tmp_path_factory):
    """A server whose guidance memory cap holds one guided image request, not two."""
    spec = TinySpec()
    per_token = 2 * spec.num_layers * spec.num_kv_heads * (spec.hidden_size // spec.num_heads) * 4  # float32
    cap_gib = 1.5 * (IMAGE_TOKENS + 16) * per_token / 2**30  # 16: room for the unconditional prompt
    live = start_server(tiny_dir, tmp_path_factory.mktemp("capped-logs") / "server.log",
                        "--max-guidance-memory-gib", str(cap_gib))
    yield live
    stop_server(live)


def _guided(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a boat"}],
                                          modalities=["image"], max_tokens=IMAGE_TOKENS,
                                          extra_body={"cfg_scale": 3.0}, **kw)


def test_guidance_memory_cap_refuses_then_admits(capped):
    client = capped.client()
    assert capped.metric("chameleon:guidance_kv_bytes_limit") > 0
    with pytest.raises(openai.BadRequestError) as never:  # two images' twins: over the cap even alone
        _guided(client, n=2)
    assert never.value.body["param"] == "max_tokens"
    first = _guided(client, stream=True)
    chunks = iter(first)
    next(chunks)
    assert settle(capped, "chameleon:guidance_kv_bytes", bool)  # the first one holds its twin
    for refused in (lambda: _guided(client), lambda: _guided(client, stream=True)):
        with pytest.raises(openai.RateLimitError) as full:
            refused()
        assert full.value.body["code"] == "guidance_memory_full"
        assert full.value.response.headers["retry-after"] == "1"
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4).choices  # unguided requests are not held back
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert settle(capped, "chameleon:guidance_kv_bytes", lambda v: not v) == 0
    assert _guided(client).choices[0].finish_reason == "stop"  # the first one done: admitted again
