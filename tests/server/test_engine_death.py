"""A dead engine: /health turns 503, requests get a clean 503, and the process exits non-zero; so does a
model that fails to load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from conftest import API_KEY, MODEL, start_server
from openapi_schema import check, sse_events

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout


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
    model_dir = make_tiny(tmp_path / "m", TinySpec(grid=4, codebook_size=64))
    live = start_server(model_dir, tmp_path / "server.log")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long = {"max_tokens": 3000, "ignore_eos": True, "min_tokens": 3000}
    # Responses has no min_tokens: its reply outlasts the kill with its stop tokens (EOS, the separator) banned
    never_ends = {str(json.loads((model_dir / "config.json").read_text())["eos_token_id"]): -100,
                  str(TokenLayout.from_checkpoint(model_dir).sep): -100}
    try:
        with httpx.Client(base_url=live.url, headers=headers, timeout=120) as http, \
                ThreadPoolExecutor(4) as pool:
            def stream(path: str, body: dict, first_event: threading.Event) -> list[str]:
                """The stream's lines; ``first_event`` is set once it has sent one, so it is past admission."""
                lines = []
                with http.stream("POST", path, json={**body, "model": MODEL, "stream": True}) as resp:
                    assert resp.status_code == 200, resp.read()
                    for line in resp.iter_lines():
                        lines.append(line)
                        if line.startswith("data: "):
                            first_event.set()
                return lines

            streaming = [threading.Event() for _ in range(3)]
            chat = pool.submit(stream, "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}], **long}, streaming[0])
            completion = pool.submit(stream, "/v1/completions", {"prompt": "hi", **long}, streaming[1])
            responses = pool.submit(stream, "/v1/responses", {
                "input": "hi", "max_output_tokens": 3000, "logit_bias": never_ends}, streaming[2])
            whole = pool.submit(http.post, "/v1/chat/completions",
                                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **long})
            assert all(event.wait(120) for event in streaming)
            _kill_engine_core(live)
            chat_events = [line[6:] for line in chat.result(timeout=120) if line.startswith("data: ")]
            completion_events = [line[6:] for line in completion.result(timeout=120) if line.startswith("data: ")]
            responses_events = sse_events("\n".join(responses.result(timeout=120)))
            cut = whole.result(timeout=120)
        assert chat_events[-1] == "[DONE]"
        payloads = [json.loads(e) for e in chat_events[:-1]]
        assert payloads[-1]["error"]["message"] and payloads[-1]["error"]["type"]
        assert not any(c.get("finish_reason") for p in payloads[:-1] for c in p["choices"]), payloads[-3:]
        assert completion_events[-1] == "[DONE]"
        completion_payloads = [json.loads(e) for e in completion_events[:-1]]
        assert completion_payloads[-1]["error"]["message"]
        assert not any(c.get("finish_reason") for p in completion_payloads[:-1] for c in p["choices"])
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
