"""Admission limits, remote image URLs, readiness, request ids and logs, and a graceful SIGTERM, on a small
dedicated server."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL, start_server, stop_server
from imagehost import ImageHost
from testimages import data_url, noise_image

from engine.offline.tiny import TinySpec, make_tiny

MAX_BODY = 20_000
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model_dir = make_tiny(tmp_path_factory.mktemp("small"), TinySpec(grid=4, codebook_size=64))
    live = start_server(model_dir, tmp_path_factory.mktemp("small-logs") / "server.log",
                        "--max-num-seqs", "2", "--max-queued-requests", "1", "--max-body-bytes", str(MAX_BODY),
                        "--allowed-image-hosts", "127.0.0.1", "--image-fetch-timeout-seconds", "5")
    yield live
    stop_server(live)


def _chat(max_tokens: int = 4, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, **kw}


def test_body_over_the_limit_is_413(small):
    big = _chat(messages=[{"role": "user", "content": "x" * (2 * MAX_BODY)}])
    resp = httpx.post(f"{small.url}/v1/chat/completions", headers=HEADERS, json=big)
    assert resp.status_code == 413 and resp.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while read
        body = json.dumps(big).encode()
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    resp = httpx.post(f"{small.url}/v1/chat/completions", headers={**HEADERS, "Content-Type": "application/json"},
                      content=chunks())
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{small.url}/v1/chat/completions", headers=HEADERS, json=_chat()).status_code == 200


def test_past_running_plus_queued_is_429_with_retry_after(small):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{small.url}/v1/chat/completions", headers=HEADERS,
                            json=_chat(max_tokens=300, ignore_eos=True, min_tokens=300)) for _ in range(6)])

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert statuses.count(200) >= 3 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}
    rejected = next(r for r in asyncio.run(burst()) if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["type"] == "rate_limit_error"
    assert httpx.post(f"{small.url}/v1/chat/completions", headers=HEADERS, json=_chat()).status_code == 200


def test_socket_answers_not_ready_while_the_model_loads(small):
    assert small.startup_statuses and set(small.startup_statuses) == {503}
    assert httpx.get(f"{small.url}/ready").json() == {"status": "ready"}


def test_remote_image_url_from_an_allowlisted_host(small):
    image = noise_image(3, size=(32, 32))  # its data: URL stays under the body limit
    png = io.BytesIO()
    image.save(png, format="PNG")
    client = openai.OpenAI(base_url=f"{small.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def ask(url: str) -> str | None:
        content = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}]
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                              max_tokens=6, temperature=0).choices[0].message.content

    with ImageHost(png.getvalue()).running() as host:
        assert ask(host.url("/image.png")) == ask(data_url(image))  # same image, same greedy answer
        with pytest.raises(openai.BadRequestError) as refused:
            ask(host.url("/image.png", host="localhost"))
    assert refused.value.body["code"] == "image_url_host_not_allowed"


def test_request_id_is_returned_and_logged(small):
    resp = httpx.post(f"{small.url}/v1/chat/completions", headers={**HEADERS, "X-Request-Id": "abc-123"},
                      json=_chat())
    assert resp.headers["x-request-id"] == "abc-123"
    assert httpx.get(f"{small.url}/health").headers["x-request-id"]  # generated when not given
    lines = [json.loads(line.split("chameleon.requests: ", 1)[1]) for line in small.log().splitlines()
             if "chameleon.requests: " in line]
    mine = next(entry for entry in lines if entry["request_id"] == "abc-123")
    assert mine["route"] == "/v1/chat/completions" and mine["status"] == 200
    assert mine["prompt_tokens"] > 0 and mine["completion_tokens"] == 4 and mine["images_in"] == 0


def test_sigterm_lets_a_running_stream_finish_then_exits_cleanly(small):
    """Last in this module: it stops the server."""
    client = openai.OpenAI(base_url=f"{small.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go"}],
                                            max_tokens=200, stream=True, extra_body={"ignore_eos": True,
                                                                                     "min_tokens": 200})
    first = next(iter(stream))
    threading.Timer(0.2, small.process.send_signal, args=(signal.SIGTERM,)).start()
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "length"  # the whole answer arrived
    assert small.process.wait(60) == 0
