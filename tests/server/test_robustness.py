"""Robustness: more bad input, fuzzed chat bodies, and a mixed soak, all against the session server.

Every failure must be a clean OpenAI error ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status, never a 5xx; the server keeps answering, and no request is lost or left running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib

import httpx
import pytest
from conftest import API_KEY, MODEL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testimages import data_url, noise_image

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
IMAGES = "/v1/images/generations"


def _chat(**over) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **over}


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (8-bit RGB); the pixel data is a stub."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _b64_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


_SMALL_PNG = data_url(noise_image(1, (8, 8)))
_PNG_BYTES = base64.b64decode(data_url(noise_image(2, (64, 64))).split(",", 1)[1])


def assert_error_shape(resp: httpx.Response) -> dict:
    """The body is exactly OpenAI's error object; returns ``error``."""
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"{resp.status_code}: not JSON: {resp.text[:500]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"{resp.status_code}: {resp.text[:500]}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, resp.text[:500]
    assert isinstance(error["message"], str) and error["message"], resp.text[:500]
    assert isinstance(error["type"], str) and error["type"], resp.text[:500]
    assert error["param"] is None or isinstance(error["param"], str), resp.text[:500]
    assert error["code"] is None or isinstance(error["code"], str), resp.text[:500]
    return error


def _still_answers(server) -> None:
    resp = httpx.post(f"{server.url}{CHAT}", headers=AUTH, json=_chat(max_tokens=1), timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in ("stop", "length")


# (id, method, path, body (dict/list/number -> JSON; str/bytes -> raw; None -> no body), headers, statuses)
BAD = [
    # --- body shape ---
    ("body is a json list", "POST", CHAT, [1, 2, 3], AUTH, {400}),
    ("body is a json number", "POST", CHAT, 42, AUTH, {400}),
    ("body is a json string", "POST", CHAT, "\"hello\"", AUTH, {400}),
    ("empty body", "POST", CHAT, "", AUTH, {400}),
    ("model a lone surrogate", "POST", CHAT, _chat(model="\ud800"), AUTH, {404}),
    ("content a lone surrogate", "POST", CHAT, _chat(messages=[{"role": "user", "content": "a\udc80b"}]), AUTH,
     {200, 400}),
    ("model missing", "POST", CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, AUTH, {400}),
    # --- messages ---
    ("messages is a string", "POST", CHAT, _chat(messages="hi"), AUTH, {400}),
    ("messages is an object", "POST", CHAT, _chat(messages={"role": "user", "content": "hi"}), AUTH, {400}),
    ("message is a string", "POST", CHAT, _chat(messages=["hi"]), AUTH, {400}),
    ("message without role", "POST", CHAT, _chat(messages=[{"content": "hi"}]), AUTH, {400}),
    ("content is a number", "POST", CHAT, _chat(messages=[{"role": "user", "content": 7}]), AUTH, {400}),
    ("content part unknown type", "POST", CHAT,
     _chat(messages=_user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})), AUTH, {400}),
    ("content part without type", "POST", CHAT, _chat(messages=_user({"text": "hi"})), AUTH, {400}),
    ("image_url missing url", "POST", CHAT, _chat(messages=_user({"type": "image_url", "image_url": {}})), AUTH,
     {400}),
    ("image_url url not a string", "POST", CHAT, _chat(messages=_user({"type": "image_url", "image_url": {"url": 5}})),
     AUTH, {400}),
    ("data url non-image mime", "POST", CHAT,
     _chat(messages=_user(_image_part(_b64_url(b"hello world", "text/plain")))), AUTH, {400}),
    ("data url not base64", "POST", CHAT,
     _chat(messages=_user(_image_part("data:image/png,rawbytes"))), AUTH, {400}),
    ("truncated png", "POST", CHAT,
     _chat(messages=_user(_image_part(_b64_url(_PNG_BYTES[: len(_PNG_BYTES) // 2])))), AUTH, {400}),
    ("png header only", "POST", CHAT, _chat(messages=_user(_image_part(_b64_url(_PNG_BYTES[:40])))), AUTH, {400}),
    ("decompression bomb 50000x50000", "POST", CHAT, _chat(messages=_user(_image_part(_b64_url(_bomb_png())))), AUTH,
     {400}),
    ("too many images", "POST", CHAT,
     _chat(messages=_user(*[_image_part(_SMALL_PNG) for _ in range(9)], {"type": "text", "text": "hi"})), AUTH, {400}),
    # --- sampling fields ---
    ("stop list of 5", "POST", CHAT, _chat(stop=["a", "b", "c", "d", "e"]), AUTH, {400}),
    ("stop is a number", "POST", CHAT, _chat(stop=5), AUTH, {400}),
    ("top_p 0", "POST", CHAT, _chat(top_p=0), AUTH, {400}),
    ("top_p 1.5", "POST", CHAT, _chat(top_p=1.5), AUTH, {400}),
    ("temperature 3", "POST", CHAT, _chat(temperature=3), AUTH, {400}),
    ("temperature negative", "POST", CHAT, _chat(temperature=-0.5), AUTH, {400}),
    ("frequency_penalty 3", "POST", CHAT, _chat(frequency_penalty=3), AUTH, {400}),
    ("logit_bias non-numeric key", "POST", CHAT, _chat(logit_bias={"abc": 1}), AUTH, {400}),
    ("logit_bias negative key", "POST", CHAT, _chat(logit_bias={"-1": 1}), AUTH, {400}),
    ("logit_bias superscript-digit key", "POST", CHAT, _chat(logit_bias={"\u00b2": 1}), AUTH, {400}),
    ("logit_bias value out of range", "POST", CHAT, _chat(logit_bias={"5": 1000}), AUTH, {400}),
    ("logit_bias value not a number", "POST", CHAT, _chat(logit_bias={"5": "up"}), AUTH, {400}),
    ("logit_bias id past vocab", "POST", CHAT, _chat(logit_bias={"99999999": 1}), AUTH, {400}),
    ("n 17", "POST", CHAT, _chat(n=17), AUTH, {400}),
    ("max_tokens 0", "POST", CHAT, _chat(max_tokens=0), AUTH, {400}),
    ("max_tokens a float", "POST", CHAT, _chat(max_tokens=2.5), AUTH, {400}),
    ("max_tokens huge", "POST", CHAT, _chat(max_tokens=10**30), AUTH, {400}),
    ("max_completion_tokens negative", "POST", CHAT, _chat(max_completion_tokens=-3), AUTH, {400}),
    ("min_tokens over max_tokens", "POST", CHAT, _chat(min_tokens=50), AUTH, {400}),
    ("seed a string", "POST", CHAT, _chat(seed="abc"), AUTH, {400}),
    ("seed past 64 bits", "POST", CHAT, _chat(seed=2**70), AUTH, {200, 400}),
    ("stream not a bool", "POST", CHAT, _chat(stream="maybe"), AUTH, {400}),
    ("stream_options a string", "POST", CHAT, _chat(stream=True, stream_options="x"), AUTH, {400}),
    # --- completions ---
    ("completions two prompts", "POST", COMPL, {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2}, AUTH, {400}),
    ("completions nested token lists", "POST", COMPL, {"model": MODEL, "prompt": [[1, 2]], "max_tokens": 2}, AUTH,
     {400}),
    ("completions negative token id", "POST", COMPL, {"model": MODEL, "prompt": [-1], "max_tokens": 2}, AUTH, {400}),
    ("completions prompt missing", "POST", COMPL, {"model": MODEL, "max_tokens": 2}, AUTH, {400}),
    ("completions max_tokens 0", "POST", COMPL, {"model": MODEL, "prompt": "a", "max_tokens": 0}, AUTH, {400}),
    # --- routes, methods, auth ---
    ("GET on chat route", "GET", CHAT, None, AUTH, {405}),
    ("PUT on completions route", "PUT", COMPL, {}, AUTH, {405}),
    ("POST on models route", "POST", "/v1/models", {}, AUTH, {405}),
    ("unknown route", "GET", "/v1/nope", None, AUTH, {404}),
    ("unknown route POST", "POST", "/v1/chat/complete", _chat(), AUTH, {404}),
    ("no Authorization on completions", "POST", COMPL, {"model": MODEL, "prompt": "a"}, {}, {401}),
    ("no Authorization on models", "GET", "/v1/models", None, {}, {401}),
    ("no Authorization on images", "POST", IMAGES, {"prompt": "a cat"}, {}, {401}),
    ("malformed Authorization", "GET", "/v1/models", None, {"Authorization": "Basic dGVzdDp0ZXN0"}, {401}),
    # --- images ---
    ("images n 11", "POST", IMAGES, {"prompt": "a cat", "n": 11}, AUTH, {400}),
    ("images unknown model", "POST", IMAGES, {"prompt": "a cat", "model": "dall-e-3"}, AUTH, {404}),
    ("images prompt missing", "POST", IMAGES, {"n": 1}, AUTH, {400}),
    ("images prompt not a string", "POST", IMAGES, {"prompt": ["a", "cat"]}, AUTH, {400}),
]


def _request(server, method: str, path: str, body, headers: dict, timeout: float = 60) -> httpx.Response:
    kw: dict = {}
    if isinstance(body, (str, bytes)):
        kw["content"] = body
    elif body is not None:
        kw["content"] = json.dumps(body)
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=timeout, **kw)


@pytest.mark.parametrize("name,method,path,body,headers,statuses", BAD, ids=[c[0] for c in BAD])
def test_bad_input_more(server, name, method, path, body, headers, statuses):
    resp = _request(server, method, path, body, headers)
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text[:500]}"
    if resp.status_code != 200:
        assert 400 <= resp.status_code < 500
        error = assert_error_shape(resp)
        if resp.status_code == 401:
            assert error["type"] == "authentication_error"
    _still_answers(server)


# Bad input that surfaces as a library exception (not a typed APIError) inside the route.
_LIBRARY_ERRORS = [
    ("decompression bomb", _chat(messages=_user(_image_part(_b64_url(_bomb_png()))))),
    ("truncated png", _chat(messages=_user(_image_part(_b64_url(_PNG_BYTES[: len(_PNG_BYTES) // 2]))))),
    ("not an image", _chat(messages=_user(_image_part(_b64_url(b"hello world"))))),
]


@pytest.mark.parametrize("name,body", _LIBRARY_ERRORS, ids=[c[0] for c in _LIBRARY_ERRORS])
def test_client_error_keeps_the_connection(server, name, body):
    """A 4xx is a handled outcome: the keep-alive connection survives and the server logs no traceback for it."""
    log_before = len(server.log())
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        resp = client.post(CHAT, json=body)
        assert resp.status_code == 400, resp.text
        assert_error_shape(resp)
        time.sleep(0.3)  # let the server finish with the request (and close the connection, if it is going to)
        ok = client.post(CHAT, json=_chat(max_tokens=1))  # same pooled connection
        assert ok.status_code == 200, ok.text
    time.sleep(0.3)
    new_log = server.log()[log_before:]
    assert "Exception in ASGI application" not in new_log, new_log[-3000:]
    assert '"status": 500' not in new_log, new_log[-3000:]


# ---------------------------------------------------------------- property-based fuzzing of chat bodies

_odd_text = st.text(max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "\U0001f600" * 5, "\u202e\u200b\ufeff", "<s></s>", "<image>", "<reserved08706>",
     "data:image/png;base64,", "${x}{{x}}{%x%}", "\\u0000", "9" * 40])
_numbers = (st.integers() | st.integers(min_value=-(2**70), max_value=2**70) | st.just(2**64)
            | st.floats(allow_nan=True, allow_infinity=True))
_scalars = st.none() | st.booleans() | _numbers | _odd_text
_junk = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_odd_text, inner, max_size=4), max_leaves=12)
# a count of new tokens: small when valid, otherwise surely invalid (so no request runs long)
_bad_count = (st.integers(max_value=0) | st.floats(allow_nan=True).filter(lambda f: not float(f).is_integer())
              | st.text(alphabet="abxyz .-", max_size=5) | st.lists(st.integers(), max_size=2))
_small_count = st.integers(1, 4) | _bad_count

_image_url = st.one_of(st.just(_SMALL_PNG), st.just(_b64_url(_bomb_png())), st.just(_b64_url(_PNG_BYTES[:100])),
                       _odd_text.map(lambda s: "data:image/png;base64," + s), _odd_text, _junk)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _odd_text | _junk}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": _image_url})
                           | _junk}),
    st.fixed_dictionaries({"type": _odd_text}, optional={"text": _junk, "image_url": _junk}),
    _junk,
)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                           "content": _odd_text | st.lists(_part, max_size=3)}),
    st.fixed_dictionaries({}, optional={"role": _odd_text | _junk, "content": _junk, "name": _junk}),
    _junk,
)
_fields = {
    "frequency_penalty": st.floats(-3, 3) | _junk,
    "presence_penalty": st.floats(-3, 3) | _junk,
    "logit_bias": st.dictionaries(st.integers(-5, 70000).map(str) | _odd_text,
                                  st.floats(-150, 150) | _junk, max_size=3) | _junk,
    "n": st.integers(-2, 18) | _junk,
    "seed": _numbers | _junk,
    "stop": _odd_text | st.lists(_odd_text, max_size=6) | _junk,
    "stream": st.booleans() | _junk,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | _junk}) | _junk,
    "temperature": st.floats(-1, 3) | _junk,
    "top_p": st.floats(-0.5, 1.5) | _junk,
    "top_k": st.integers(-3, 100000) | _junk,
    "min_tokens": st.integers(-2, 8) | _junk,
    "repetition_penalty": st.floats(-1, 3) | _junk,
    "ignore_eos": st.booleans() | _junk,
    "return_token_ids": st.booleans() | _junk,
    "user": _odd_text | _junk,
    "modalities": st.just(["text"]) | st.lists(_odd_text, max_size=3) | _junk,
    "image_temperature": _numbers | _junk,
    "image_top_k": _numbers | _junk,
    "image_top_p": _numbers | _junk,
    "max_completion_tokens": _small_count,
    "unknown_field": _junk,  # extra fields are ignored
}
_chat_body = st.fixed_dictionaries(
    {"model": st.just(MODEL) | _odd_text | _junk,
     "messages": st.lists(_message, min_size=1, max_size=3) | _junk,
     "max_tokens": _small_count},
    optional=_fields,
)
_body = st.one_of(_chat_body, _chat_body, _chat_body, _junk)  # mostly objects, sometimes any JSON


def _no_image_output(body) -> bool:
    """Image output ignores max_tokens and takes seconds: keep it out of the fuzz."""
    return not (isinstance(body, dict) and isinstance(body.get("modalities"), list) and "image" in body["modalities"])


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(body=_body.filter(_no_image_output))
def test_fuzz_chat_never_5xx(server, body):
    raw = json.dumps(body, allow_nan=True)  # NaN/Infinity too: Python's JSON reader takes them
    resp = httpx.post(f"{server.url}{CHAT}", headers={**AUTH, "Content-Type": "application/json"}, content=raw,
                      timeout=120)
    assert resp.status_code < 500, f"{resp.status_code} for {raw[:1000]}: {resp.text[:500]}"
    if resp.status_code != 200:
        assert_error_shape(resp)
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", resp.text[-500:]
        for event in events[:-1]:
            payload = json.loads(event)
            assert "error" not in payload, f"stream error for {raw[:1000]}: {event}"
    else:
        assert resp.json()["choices"], resp.text[:500]


def test_fuzz_left_server_healthy(server):
    _still_answers(server)


# ---------------------------------------------------------------- soak

SOAK_REQUESTS = 520
SOAK_CONCURRENCY = 16
SOAK_TIMEOUT_S = 300


def _soak_plan() -> list[tuple[str, str, dict, bool]]:
    """(kind, path, body, stream) for each request, in a fixed interleaving."""
    image_in = data_url(noise_image(3, (48, 40)))
    plan = []
    for i in range(SOAK_REQUESTS):
        k = i % 13
        mt = 4 + i % 5
        if i % 130 == 65:
            stream = i % 260 == 65
            plan.append(("image_out", CHAT, {"model": MODEL, "seed": i, "modalities": ["image"], "stream": stream,
                                             "messages": [{"role": "user", "content": f"Draw {i}"}]}, stream))
        elif k in (0, 1, 2, 3):
            plan.append(("chat", CHAT, _chat(max_tokens=mt, temperature=0.8, seed=i,
                                             messages=[{"role": "user", "content": f"hello {i}"}]), False))
        elif k in (4, 5, 6):
            plan.append(("chat_stream", CHAT, _chat(max_tokens=mt, stream=True, n=1 + i % 2,
                                                    stream_options={"include_usage": True},
                                                    messages=[{"role": "user", "content": f"stream {i}"}]), True))
        elif k in (7, 8):
            plan.append(("completion", COMPL, {"model": MODEL, "prompt": f"count {i}", "max_tokens": mt,
                                               "stream": i % 2 == 0}, i % 2 == 0))
        elif k == 9:
            plan.append(("image_in", CHAT, _chat(max_tokens=mt, messages=_user(
                _image_part(image_in), {"type": "text", "text": f"what is {i}?"})), False))
        else:  # deliberately bad
            bad = [_chat(max_tokens=0), _chat(top_p=1.5), _chat(messages=_user(_image_part(_b64_url(_bomb_png())))),
                   _chat(model="nope"), {"model": MODEL, "messages": "x"}, _chat(logit_bias={"x": 1})][i % 6]
            plan.append(("bad", CHAT, bad, False))
    return plan


async def _one(client: httpx.AsyncClient, kind: str, path: str, body: dict, stream: bool) -> tuple[str, str]:
    """Run one request; returns (kind, outcome) with outcome 'ok', 'error4xx' or a description of what went wrong."""
    if stream:
        async with client.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return kind, f"stream status {resp.status_code}: {resp.text[:300]}"
            events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return kind, f"stream did not end with [DONE]: {events[-3:]}"
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks):
            return kind, f"stream error event: {[c for c in chunks if 'error' in c]}"
        finished = [ch.get("finish_reason") for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")]
        n = body.get("n", 1)
        return kind, "ok" if len(finished) == n and set(finished) <= {"stop", "length"} else f"finish {finished}"
    resp = await client.post(path, json=body)
    if kind == "bad":
        if 400 <= resp.status_code < 500:
            try:
                error = resp.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
            except Exception:  # noqa: BLE001
                return kind, f"bad error body {resp.status_code}: {resp.text[:300]}"
            return kind, "error4xx"
        return kind, f"bad request got {resp.status_code}: {resp.text[:300]}"
    if resp.status_code != 200:
        return kind, f"status {resp.status_code}: {resp.text[:300]}"
    choices = resp.json()["choices"]
    if not choices or any(c.get("finish_reason") not in ("stop", "length") for c in choices):
        return kind, f"incomplete: {resp.text[:300]}"
    if kind == "image_out" and not any(isinstance(c["message"]["content"], list) for c in choices):
        return kind, f"no image in {resp.text[:300]}"
    return kind, "ok"


def test_soak_mixed_traffic(server):
    plan = _soak_plan()

    async def run() -> list[tuple[str, str]]:
        sem = asyncio.Semaphore(SOAK_CONCURRENCY)
        limits = httpx.Limits(max_connections=SOAK_CONCURRENCY, max_keepalive_connections=SOAK_CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=200, limits=limits) as client:
            async def guarded(item):
                async with sem:
                    try:
                        return await _one(client, *item)
                    except Exception as e:  # noqa: BLE001 -- a transport error counts as a lost request
                        return item[0], f"exception {type(e).__name__}: {e}"
            return await asyncio.wait_for(asyncio.gather(*[guarded(p) for p in plan]), SOAK_TIMEOUT_S)

    t0 = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - t0
    assert len(results) == len(plan) >= 500
    problems = [(i, k, o) for i, (k, o) in enumerate(results) if o not in ("ok", "error4xx")]
    assert not problems, f"{len(problems)} of {len(plan)} failed in {elapsed:.0f}s: {problems[:10]}"
    for (kind, *_), (_, outcome) in zip(plan, results):
        assert outcome == ("error4xx" if kind == "bad" else "ok")
    counts: dict[str, int] = {}
    for kind, _ in results:
        counts[kind] = counts.get(kind, 0) + 1
    print(f"soak: {len(results)} requests in {elapsed:.1f}s: {counts}")
    deadline = time.monotonic() + 30
    while server.metric("vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("vllm:num_requests_waiting") == 0
    _still_answers(server)
