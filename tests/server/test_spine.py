"""The spine over HTTP with the official openai client: models, chat, completions, parity with transformers."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import MODEL
from oracle import HFOracle
from testimages import data_url, noise_image, user_message

from engine.shared.vocab import TokenLayout

MAX_NEW = 24


@pytest.fixture(scope="module")
def oracle(tiny_dir) -> HFOracle:
    return HFOracle(tiny_dir)


def _greedy_chat(client, text: str, images=(), **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[user_message(text, images)], temperature=0, max_tokens=MAX_NEW,
        extra_body={"return_token_ids": True}, **kw)


def test_models_and_version(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    version = httpx.get(f"{server.url}/version").json()
    assert version["model_class"] == "engine.worker.model:ChameleonForConditionalGeneration"
    assert version["model_runner"] == "v1"  # the default everywhere (VLLM_USE_V2_MODEL_RUNNER=0), named at start
    assert "VLLM_USE_V2_MODEL_RUNNER=0 (default)" in server.log() and "vLLM model runner V1" in server.log()
    assert "chameleon-serve plugin model" in server.log()  # the engine process built our class


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_greedy_parity_with_transformers(client, oracle, tiny_dir, n_images):
    images = [noise_image(seed, size=(90 + 7 * seed, 64 + 3 * seed)) for seed in range(n_images)]
    text = "Describe what you see in detail."
    resp = _greedy_chat(client, text, images)
    expected_prompt = oracle.prompt_ids(text, images)
    assert resp.prompt_token_ids == expected_prompt  # same image codes as transformers' VQ encoder
    layout = TokenLayout.from_checkpoint(tiny_dir)
    assert expected_prompt.count(layout.boi) == n_images
    assert resp.choices[0].token_ids == oracle.greedy(text, images, MAX_NEW)
    assert resp.usage.prompt_tokens == len(expected_prompt)
    assert resp.usage.completion_tokens == len(resp.choices[0].token_ids)


def test_image_anywhere_in_content(client, oracle):
    """Images may sit between text parts; each becomes BOI + codes + EOI in place."""
    image = noise_image(7)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image, "JPEG")}},
        {"type": "text", "text": "What is this?"},
    ]}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4,
                                          extra_body={"return_token_ids": True})
    ids = resp.prompt_token_ids
    layout = oracle.layout
    assert ids[1] == layout.boi and ids[2 + layout.image_seq_length] == layout.eoi
    assert all(layout.ids_to_codes(__import__("torch").tensor(ids[2:2 + layout.image_seq_length])) >= 0)


def test_stream_concatenates_to_non_stream(client):
    full = _greedy_chat(client, "Tell me a story about the sea.")
    stream = client.chat.completions.create(
        model=MODEL, messages=[user_message("Tell me a story about the sea.")], temperature=0, max_tokens=MAX_NEW,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sixteen_concurrent_requests_each_get_their_own_answer(server, client):
    prompts = [f"Request number {i}: write about colors and numbers {i * 7}." for i in range(16)]
    sequential = [_greedy_chat(client, p).choices[0].token_ids for p in prompts]

    async def all_at_once():
        aclient = server.async_client()
        return await asyncio.gather(*[
            aclient.chat.completions.create(model=MODEL, messages=[user_message(p)], temperature=0, max_tokens=MAX_NEW,
                                            extra_body={"return_token_ids": True}) for p in prompts])

    concurrent = [r.choices[0].token_ids for r in asyncio.run(all_at_once())]
    assert concurrent == sequential
    assert len({tuple(t) for t in sequential}) > 1  # the prompts really lead to different answers


def test_sampling_knobs(client, oracle):
    kw = dict(model=MODEL, messages=[user_message("Hello there")], max_tokens=12, temperature=1.0, top_p=0.9, seed=1234,
              extra_body={"top_k": 50, "return_token_ids": True})
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].token_ids == b.choices[0].token_ids  # seeded sampling is reproducible
    many = client.chat.completions.create(**{**kw, "n": 3, "seed": None})
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    forced = client.chat.completions.create(
        model=MODEL, messages=[user_message("Hi")], temperature=0, max_completion_tokens=10,
        extra_body={"min_tokens": 10, "ignore_eos": True, "return_token_ids": True})
    assert len(forced.choices[0].token_ids) == 10 and forced.choices[0].finish_reason == "length"
    layout = oracle.layout
    forbidden = set(layout.span_token_ids())
    hot = client.chat.completions.create(model=MODEL, messages=[user_message("Hi")], temperature=2.0, max_tokens=64,
                                         n=4, extra_body={"return_token_ids": True})
    assert all(not forbidden & set(c.token_ids) for c in hot.choices)  # text-only never writes image tokens


def test_stop_strings(client):
    base = _greedy_chat(client, "Stop test prompt")
    text = base.choices[0].message.content
    if len(text) < 4:
        pytest.skip("greedy answer too short to pick a stop string from")
    stop = text[2:4]
    cut = client.chat.completions.create(model=MODEL, messages=[user_message("Stop test prompt")], temperature=0,
                                         max_tokens=MAX_NEW, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completions(client):
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0,
                                     extra_body={"return_token_ids": True})
    assert resp.usage.completion_tokens == len(resp.choices[0].token_ids) <= 8
    assert resp.prompt_token_ids[0] == 0  # BOS
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text
    by_ids = client.completions.create(model=MODEL, prompt=resp.prompt_token_ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == resp.choices[0].text
