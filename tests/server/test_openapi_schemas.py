"""Every route's bodies, stream chunks and errors validate against OpenAI's published schemas (raw HTTP)."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL
from openapi_schema import check, sse_events

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Hello there"}]


def _post(server, path: str, body: dict, status: int = 200) -> httpx.Response:
    resp = httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=300)
    assert resp.status_code == status, resp.text
    return resp


def _chat(server, **body) -> httpx.Response:
    return _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "max_tokens": 8, **body})


def test_models(server):
    resp = httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=30)
    check("ListModelsResponse", resp.json())


def _ranked(entry: dict) -> bool:
    values = [t["logprob"] for t in entry["top_logprobs"]]
    return entry["logprob"] <= 0 and values == sorted(values, reverse=True)


@pytest.mark.parametrize("body", [{}, {"n": 3, "temperature": 1.0}, {"logprobs": True},
                                  {"logprobs": True, "top_logprobs": 3, "n": 2}])
def test_chat(server, body):
    reply = _chat(server, return_token_ids=True, **body).json()
    check("CreateChatCompletionResponse", reply)
    assert len(reply["choices"]) == body.get("n", 1)
    message = reply["choices"][0]["message"]
    assert "images" not in message and message["refusal"] is None
    if body.get("logprobs"):
        content = reply["choices"][0]["logprobs"]["content"]
        assert len(content) == len(reply["choices"][0]["token_ids"])  # one entry per (text) token
        assert all(len(t["top_logprobs"]) == body.get("top_logprobs", 0) and _ranked(t) for t in content)
    else:
        assert reply["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("body", [{"stream_options": {"include_usage": True}}, {"n": 2, "temperature": 1.0},
                                  {"logprobs": True, "top_logprobs": 2, "stream_options": {"include_usage": True}}])
def test_chat_stream(server, body):
    events = sse_events(_chat(server, stream=True, return_token_ids=True, **body).text)
    for _, chunk in events:
        check("CreateChatCompletionStreamResponse", chunk)
    finishes = [c["finish_reason"] for _, e in events for c in e["choices"] if c["finish_reason"]]
    assert len(finishes) == body.get("n", 1)
    if "stream_options" in body:
        assert events[-1][1]["choices"] == [] and events[-1][1]["usage"]["completion_tokens"] > 0
    if body.get("logprobs"):
        tokens = [t for _, e in events for c in e["choices"] if c.get("logprobs") for t in c["logprobs"]["content"]]
        assert len(tokens) == sum(len(c.get("token_ids", [])) for _, e in events for c in e["choices"])
        assert tokens and all(len(t["top_logprobs"]) == 2 and _ranked(t) for t in tokens)


def test_completions(server):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8}
    check("CreateCompletionResponse", _post(server, "/v1/completions", body).json())
    events = sse_events(_post(server, "/v1/completions", {**body, "stream": True, "n": 2,
                                                          "stream_options": {"include_usage": True}}).text)
    for _, chunk in events:
        check("CreateCompletionResponse", chunk, nullable_completion_finish=True)
    assert events[-1][1]["usage"]["total_tokens"] > 0


def test_images(server):
    reply = _post(server, "/v1/images/generations", {"prompt": "a lighthouse", "n": 1}).json()
    check("ImagesResponse", reply)
    assert "size" not in reply  # the model's native size is not one of the schema's sizes


@pytest.mark.parametrize("method,path,body,headers,status", [
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}, AUTH, 400),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "top_logprobs": 2}, AUTH, 400),
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": HELLO}, AUTH, 404),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HELLO}, {}, 401),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 99999}, AUTH, 400),
    ("POST", "/v1/images/generations", {"prompt": "x", "size": "1024x1024"}, AUTH, 400),
    ("POST", "/v1/responses", {"model": MODEL, "input": "hi", "previous_response_id": "resp_1"}, AUTH, 400),
    ("POST", "/v1/responses", {"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "f"}]},
     AUTH, 400),
    ("GET", "/v1/nowhere", None, AUTH, 404),
    ("PUT", "/v1/models", None, AUTH, 405),
])
def test_errors(server, method, path, body, headers, status):
    resp = httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    check("ErrorResponse", resp.json())
    assert resp.json()["error"]["message"]
    _chat(server)  # and the server still answers


def test_responses(server):
    body = {"model": MODEL, "input": "Hello", "max_output_tokens": 8, "instructions": "Be brief."}
    reply = _post(server, "/v1/responses", body).json()
    check("Response", reply)
    assert reply["status"] == "incomplete" or reply["status"] == "completed"
    events = sse_events(_post(server, "/v1/responses", {**body, "stream": True}).text)
    for name, event in events:
        check("ResponseStreamEvent", event)
        assert name == event["type"]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    assert events[0][0] == "response.created" and events[-1][0] in ("response.completed", "response.incomplete")


def test_strict_openai_client(server):
    """The official client validating every body against its own types (streamed completions excepted: the
    SDK types finish_reason without null, so strict validation rejects OpenAI's own streamed chunks too)."""
    client = server.client(_strict_response_validation=True)
    assert [m.id for m in client.models.list().data] == [MODEL]
    many = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=2, seed=1,
                                          logprobs=True, top_logprobs=2)
    assert len(many.choices) == 2 and many.choices[0].logprobs.content[0].top_logprobs
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert client.completions.create(model=MODEL, prompt="Once", max_tokens=4).choices[0].finish_reason
    assert client.images.generate(model=MODEL, prompt="a boat").data[0].b64_json
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
