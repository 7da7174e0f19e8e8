"""A dead engine: /health turns 503, requests get a clean 503, and the process exits non-zero; so does a
model that fails to load."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest
from conftest import API_KEY, MODEL, start_server

from engine.tiny import TinySpec, make_tiny


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
