"""The processes of a CPU server at one worker: the front end and vLLM's EngineCore, which runs the model itself."""

from __future__ import annotations

import psutil


def test_the_engine_core_runs_the_model_without_a_worker_process(server, client):
    """vLLM's CPU build would start a worker process under the EngineCore and hand each step over to it twice
    through a polled shared-memory queue (server.cli.model_in_engine_core); here the EngineCore has no
    process of its own under it, and it answers."""
    [core] = [p for p in psutil.Process(server.process.pid).children() if "EngineCor" in p.name()]
    assert [p.name() for p in core.children(recursive=True)] == []
    reply = client.chat.completions.create(model="tiny-chameleon", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_prompts_reach_the_engine_as_rendered_token_input(server, client):
    """The front end hands vLLM token ids it has built; a raw prompt would go through vLLM's renderer on a
    thread of its executor (and vLLM logs that raw prompts are deprecated)."""
    client.completions.create(model="tiny-chameleon", prompt="hi", max_tokens=2, temperature=0)
    assert "Passing raw prompts to InputProcessor is deprecated" not in server.log()
