"""Run one request on the engine: per-choice deltas for streams, whole choices otherwise.

A request whose client disconnects is cancelled, which aborts it in vLLM and
frees its KV blocks (AsyncLLM.generate aborts on cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from engine.runner import ChameleonEngine

T = TypeVar("T")


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass(slots=True)
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


async def stream_deltas(engine: ChameleonEngine, prompt_ids: list[int], params, request_id: str
                        ) -> AsyncIterator[list[ChoiceDelta]]:
    async for out in engine.generate(prompt_ids, params, request_id):
        yield [ChoiceDelta(o.index, o.text, list(o.token_ids), _finish(o.finish_reason)) for o in out.outputs]


async def collect_choices(engine: ChameleonEngine, prompt_ids: list[int], params, request_id: str) -> list[Choice]:
    choices = [Choice(index=i) for i in range(params.n)]
    async for deltas in stream_deltas(engine, prompt_ids, params, request_id):
        for d in deltas:
            c = choices[d.index]
            c.text += d.text
            c.token_ids += d.token_ids
            c.finish_reason = d.finish_reason or c.finish_reason
    return choices


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it if the client goes away first (then raise CancelledError)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    return task.result()
