"""A dead engine: /health turns 503, requests get a clean 503, and the process exits non-zero; so does a
model that fails to load."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from conftest import API_KEY, MODEL, start_server
from openapi_schema import check, sse_events

from engine.offline.tiny import TinySpec, make_tiny


def test_engine_death_is_reported_and_ends_the_process(tmp_path):
    live = start_server(make_tiny(tmp_path / "m", TinySpec(grid=4, codebook_size=64)), tmp_path / "server.log")
    try:
        [core] = [p for p in psutil.Process(live.process.pid).children() if "EngineCor" in p.name()]
        os.kill(core.pid, signal.SIGKILL)
        deadline, statuses = time.monotonic() + 60, set()
        while live.process.poll() is None and time.monotonic() < deadline:
            try:
                statuses.add(httpx.get(f"{live.url}/health", timeout=2).status_code)
                resp = httpx.post(f"{live.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                                  json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
                assert resp.status_code in (200, 503), resp.text  # never a 500
                if resp.status_code == 503:
                    assert resp.json()["error"]["message"]
            except httpx.TransportError:
                pass  # the server has stopped listening
            time.sleep(0.2)
        assert live.process.wait(60) == 1, live.log()[-3000:]
        assert "engine died" in live.log()
    finally:
        if live.process.poll() is None:
            live.process.kill()


def test_a_model_that_fails_to_load_ends_the_process_with_1(tmp_path):
    """Weights that only the engine reads (the preflight checks the small files) fail inside vLLM's start."""
    model_dir = make_tiny(tmp_path / "m", TinySpec(grid=4, codebook_size=64))
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="server exited with 1") as failed:
        start_server(model_dir, tmp_path / "server.log")
    assert "the inference engine failed to start" in str(failed.value)
    assert "SafetensorError" in (tmp_path / "server.log").read_text()  # the cause, in the same log


def _kill_engine_core(live) -> None:
    [core] = [p for p in psutil.Process(live.process.pid).children() if "EngineCor" in p.name()]
    os.kill(core.pid, signal.SIGKILL)


def test_a_reply_cut_by_the_engines_death_does_not_look_complete(tmp_path):
    """Killed mid-reply: a chat or completions stream ends with one in-band error event (OpenAI's error shape)
    and no finish reason, a Responses stream with response.failed, and a reply not streamed is a 503."""
    live = start_server(make_tiny(tmp_path / "m", TinySpec(grid=4, codebook_size=64)), tmp_path / "server.log")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long = {"max_tokens": 3000, "ignore_eos": True, "min_tokens": 3000}
    try:
        with httpx.Client(base_url=live.url, headers=headers, timeout=120) as http, \
                ThreadPoolExecutor(4) as pool:
            whole = pool.submit(http.post, "/v1/chat/completions",
                                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **long})
            responses_stream: list[str] = []

            def read_responses() -> None:
                with http.stream("POST", "/v1/responses", json={
                        "model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 3000}) as resp:
                    responses_stream.append(resp.read().decode())

            responses = pool.submit(read_responses)
            completion_stream: list[str] = []

            def read_completion() -> None:
                with http.stream("POST", "/v1/completions", json={
                        "model": MODEL, "prompt": "hi", "stream": True, **long}) as resp:
                    completion_stream.append(resp.read().decode())

            completion = pool.submit(read_completion)
            chat_events: list[str] = []
            with http.stream("POST", "/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, **long}) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        chat_events.append(line[6:])
                        if len(chat_events) == 5:
                            _kill_engine_core(live)
            responses.result(timeout=120)
            completion.result(timeout=120)
            cut = whole.result(timeout=120)
        assert chat_events[-1] == "[DONE]"
        payloads = [json.loads(e) for e in chat_events[:-1]]
        assert payloads[-1]["error"]["message"] and payloads[-1]["error"]["type"]
        assert not any(c.get("finish_reason") for p in payloads[:-1] for c in p["choices"]), payloads[-3:]
        completion_events = [line[6:] for line in completion_stream[0].splitlines() if line.startswith("data: ")]
        assert completion_events[-1] == "[DONE]"
        completion_payloads = [json.loads(e) for e in completion_events[:-1]]
        assert completion_payloads[-1]["error"]["message"]
        assert not any(c.get("finish_reason") for p in completion_payloads[:-1] for c in p["choices"])
        responses_events = sse_events(responses_stream[0])
        name, failed = responses_events[-1]
        assert name == "response.failed", [n for n, _ in responses_events[-3:]]
        check("ResponseFailedEvent", failed)
        assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"]
        assert "response.completed" not in [n for n, _ in responses_events]
        assert cut.status_code == 503, cut.text
        assert cut.json()["error"]["message"]
    finally:
        if live.process.poll() is None:
            live.process.kill()
