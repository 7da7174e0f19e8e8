"""Bad input gets an OpenAI-style error with the right status; the server keeps answering."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL


def _post(server, path: str, body, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kw = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(f"{server.url}{path}", headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw)


def _chat(**over) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **over}


CASES = [
    ("invalid json", "/v1/chat/completions", "{not json", 400),
    ("unknown model", "/v1/chat/completions", _chat(model="nope"), 404),
    ("no messages", "/v1/chat/completions", _chat(messages=[]), 400),
    ("unknown role", "/v1/chat/completions", _chat(messages=[{"role": "robot", "content": "x"}]), 400),
    ("empty content", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": []}]), 400),
    ("negative max_tokens", "/v1/chat/completions", _chat(max_tokens=-1), 400),
    ("max_tokens past context", "/v1/chat/completions", _chat(max_tokens=10**6), 400),
    ("n out of range", "/v1/chat/completions", _chat(n=0), 400),
    ("temperature type", "/v1/chat/completions", _chat(temperature="hot"), 400),
    ("garbage base64", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!notbase64"}}]}]), 400),
    ("not an image", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}}]}]), 400),
    ("remote url", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]), 400),
    ("completions unknown model", "/v1/completions", {"model": "x", "prompt": "a"}, 404),
    ("completions empty prompt", "/v1/completions", {"model": MODEL, "prompt": []}, 400),
    ("token id out of vocab", "/v1/completions", {"model": MODEL, "prompt": [10**9]}, 400),
]


@pytest.mark.parametrize("name,path,body,status", CASES, ids=[c[0] for c in CASES])
def test_bad_input(server, client, name, path, body, status):
    resp = _post(server, path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert client.models.list().data  # still answering


def test_auth(server):
    for key in (None, "wrong"):
        resp = _post(server, "/v1/chat/completions", _chat(), key=key)
        assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/health").status_code == 200  # open without a key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
