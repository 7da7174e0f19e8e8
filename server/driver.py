"""The one loop between the engine and a route: it iterates the request's deltas (``server/generation.py``),
accounts them in the request's context, hands them to the route's wire mapping, and owns the two ways a reply
can end early. A client that goes away cancels the work, which aborts the request in vLLM and frees its KV
blocks (``AsyncLLM.generate`` aborts on cancellation). A failure once the status line is sent ends the stream
with the route's own error shape, so that a cut reply never passes for a whole one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from engine.frontend.client import ChameleonEngine
from server.context import RequestContext
from server.errors import APIError, as_api_error
from server.generation import PNG, Choice, ChoiceDelta, stream_deltas

T = TypeVar("T")


class WireStream(Protocol):
    """A route's wire mapping of a streamed reply: the events it sends, each a string already framed."""

    def opening(self) -> list[str]:
        """Before the first delta."""

    async def delta(self, delta: ChoiceDelta) -> list[str]:
        """For one choice's delta (the context has accounted it already)."""

    def closing(self) -> list[str]:
        """After the last delta."""

    def failed(self, error: APIError) -> list[str]:
        """The end of a stream that failed: the route's error shape, in-band."""


def _account(ctx: RequestContext, delta: ChoiceDelta) -> None:
    usage, record = ctx.usage, ctx.record
    usage.completion_tokens[delta.index] += len(delta.token_ids)
    usage.completion_image_tokens[delta.index] += sum(delta.image_mask)
    usage.images_out += sum(isinstance(p, PNG) for p in delta.pieces)
    record.completion_tokens, record.images_out = sum(usage.completion_tokens), usage.images_out


async def _events(ctx: RequestContext, engine: ChameleonEngine, wire: WireStream,
                  partial_images: int) -> AsyncIterator[str]:
    try:
        for event in wire.opening():
            yield event
        async for deltas in stream_deltas(engine, ctx, partial_images):
            for delta in deltas:
                _account(ctx, delta)
                for event in await wire.delta(delta):
                    yield event
        for event in wire.closing():
            yield event
    except Exception as exc:  # noqa: BLE001 -- the status line is sent already: report in-band
        for event in wire.failed(as_api_error(exc)):
            yield event


def stream(ctx: RequestContext, engine: ChameleonEngine, wire: WireStream,
           partial_images: int = 0) -> StreamingResponse:
    """The reply as server-sent events; ``partial_images`` previews of each image precede it."""
    return StreamingResponse(_events(ctx, engine, wire, partial_images), media_type="text/event-stream")


async def collect(request: Request, ctx: RequestContext, engine: ChameleonEngine) -> list[Choice]:
    """The whole reply, one choice per ``n``; cancelled if the client goes away first."""
    async def choices() -> list[Choice]:
        whole = [Choice(index=i) for i in range(ctx.params.n)]
        async for deltas in stream_deltas(engine, ctx):
            for delta in deltas:
                _account(ctx, delta)
                whole[delta.index].add(delta)
        return whole

    return await _until_disconnect(request, choices())


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
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
