"""Classifier-free guidance over HTTP on the tiny checkpoint: chat and images routes, metrics, abort, and the
unconditional companions' KV in vLLM's own paged cache (its usage metric, its prefix cache)."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL
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


def cache_config(server) -> dict[str, str]:
    """vLLM's cache settings as the server exposes them (the labels of ``vllm:cache_config_info``)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    labels = re.search(r"^vllm:cache_config_info\{([^}]*)\}", text, re.MULTILINE)
    assert labels, "no vllm:cache_config_info on /metrics"
    return dict(re.findall(r'(\w+)="([^"]*)"', labels.group(1)))


def negative_prompt(client, text: str, min_tokens: int) -> str:
    """``text`` repeated until its unconditional prompt (the negative prompt as a chat turn) has ``min_tokens``."""
    one, two = len(prompt_ids(client, text)), len(prompt_ids(client, f"{text} {text}"))
    words = " ".join([text] * (1 + max(0, -(-(min_tokens - one) // (two - one)))))
    while len(prompt_ids(client, words)) < min_tokens:
        words += " " + text
    return words


def test_dropped_guided_stream_holds_its_companion_in_the_kv_cache_then_frees_everything(server, client):
    """The companion's KV is paged in vLLM's cache: while the stream is open, more blocks are in use than the row
    could ever take alone; once it is dropped, nothing runs and the cache is back to idle."""
    config = cache_config(server)
    block, blocks = int(config["block_size"]), int(config["num_gpu_blocks"])
    row_alone = -(-(len(prompt_ids(client, "a tree")) + IMAGE_TOKENS) // block)  # the row's most blocks
    negative = negative_prompt(client, "grainy and dull", (row_alone + 2) * block)  # the companion's: more
    assert settle(server, "vllm:num_requests_running", lambda v: not v) == 0
    idle = server.metric("vllm:kv_cache_usage_perc")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a tree"}],
                                            modalities=["image"], stream=True, max_tokens=IMAGE_TOKENS,
                                            extra_body={"cfg_scale": 2.0, "negative_prompt": negative})
    next(iter(stream))
    in_use = 0
    for _ in range(2000):
        in_use = max(in_use, round((server.metric("vllm:kv_cache_usage_perc") - idle) * blocks))
        if in_use > row_alone or server.metric("vllm:num_requests_running") == 0:
            break
    stream.close()
    assert in_use > row_alone, f"{in_use} blocks in use, no more than the row's {row_alone} alone"
    assert settle(server, "vllm:num_requests_running", lambda v: not v) == 0
    assert settle(server, "vllm:kv_cache_usage_perc", lambda v: v == idle) == idle


def test_companions_share_a_negative_prompt_through_the_prefix_cache(server, client):
    """A second guided request with the same negative prompt finds its companion's prompt, all full blocks of it,
    in vLLM's prefix cache (its own prompt is shorter than a block, so every hit is the companion's)."""
    block = int(cache_config(server)["block_size"])
    negative = negative_prompt(client, "washed out, low contrast", 2 * block + 1)
    shared = len(prompt_ids(client, negative)) // block * block
    assert len(prompt_ids(client, "a green tree")) < block

    def guided(text: str):
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                              modalities=["image"], max_tokens=IMAGE_TOKENS,
                                              extra_body={"cfg_scale": 3.0, "negative_prompt": negative})

    assert guided("a red boat").choices[0].finish_reason == "stop"
    before = server.metric("vllm:prefix_cache_hits_total")
    assert guided("a green tree").choices[0].finish_reason == "stop"
    hits = settle(server, "vllm:prefix_cache_hits_total", lambda v: v - before >= shared) - before
    assert hits >= shared, f"{hits} prefix cache hits, fewer than the negative prompt's {shared} tokens in full blocks"
