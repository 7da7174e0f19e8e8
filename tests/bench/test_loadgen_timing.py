"""How the load generator times a stream, on canned server-sent events (no server: the parsing alone)."""

from __future__ import annotations

import asyncio
import json

import httpx

from bench import loadgen
from bench.workloads import text_chat


def _stream(*choices: dict) -> httpx.MockTransport:
    events = [{"choices": [c]} for c in choices]
    events.append({"choices": [], "usage": {"completion_tokens": 4}})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.MockTransport(lambda request: httpx.Response(200, text=body,
                                                              headers={"content-type": "text/event-stream"}))


def _send(transport: httpx.MockTransport, token_ids: bool) -> loadgen.Record:
    async def run() -> loadgen.Record:
        async with httpx.AsyncClient(transport=transport, base_url="http://server/v1") as client:
            return await loadgen.send(client, "m", text_chat(4, token_ids=token_ids).build(0))
    return asyncio.run(run())


def test_tokens_whose_text_is_held_back_are_timed_when_the_server_reports_them():
    """Four tokens: the second and third are bytes of one character, so their chunk carries no text."""
    transport = _stream({"delta": {"content": "a"}, "token_ids": [10]},
                        {"delta": {"content": ""}, "token_ids": [11]},
                        {"delta": {"content": "é"}, "token_ids": [12]},
                        {"delta": {"content": "b"}, "token_ids": [13]})
    rec = _send(transport, token_ids=True)
    assert rec.ok and rec.output_tokens == 4 and len(rec.itl) == 3


def test_without_token_ids_only_text_is_timed():
    transport = _stream({"delta": {"content": "a"}}, {"delta": {"content": ""}}, {"delta": {"content": "é"}},
                        {"delta": {"content": "b"}})
    rec = _send(transport, token_ids=False)
    assert rec.ok and len(rec.itl) == 2


def test_token_ids_are_asked_for_only_when_wanted():
    assert text_chat(4, token_ids=True).build(0).args["extra_body"]["return_token_ids"] is True
    assert "return_token_ids" not in text_chat(4).build(0).args["extra_body"]
