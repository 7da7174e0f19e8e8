"""Run one request on the engine: per-choice deltas of text, finished PNGs and previews (``server/driver.py``
accounts them and hands them to the route's wire mapping), or whole choices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from engine.frontend.client import ChameleonEngine
from engine.frontend.images import encode_as
from engine.frontend.splitter import ImageCodes, SpanSplitter, StopTextHold
from schemas.images import ImageFormatFields
from server import metrics
from server.context import RequestContext
from server.errors import APIError, Unavailable
from server.previews import ImagePreviews, Preview


@dataclass(frozen=True, slots=True)
class PNG:
    data: bytes


Piece = str | PNG


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    pieces: list[Piece | Preview]  # previews only in streams that ask for them
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list | None = None  # vLLM's per-token {id: Logprob} dicts, aligned with token_ids, when asked
    image_mask: list[bool] = field(default_factory=list)  # per token of token_ids: part of an image


@dataclass(slots=True)
class Choice:
    index: int
    pieces: list[Piece] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)
    image_mask: list[bool] = field(default_factory=list)

    def add(self, delta: ChoiceDelta) -> None:
        for piece in delta.pieces:
            if isinstance(piece, str) and self.pieces and isinstance(self.pieces[-1], str):
                self.pieces[-1] += piece
            else:
                self.pieces.append(piece)
        self.token_ids += delta.token_ids
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.logprobs += delta.logprobs or []
        self.image_mask += delta.image_mask


def _finish(reason: str | None) -> str | None:
    """OpenAI's finish reason for vLLM's; a reply the engine ended early (``abort``, ``error``) raises instead:
    reported as "stop" it would pass for a whole reply."""
    if reason in ("abort", "error"):
        error = Unavailable if reason == "abort" else APIError
        raise error(f"the inference engine ended this reply before it was complete ({reason})",
                    code=f"engine_{reason}")
    return None if reason is None else ("length" if reason == "length" else "stop")


ImageBytes = TypeVar("ImageBytes", PNG, Preview)


async def in_format(image: ImageBytes, fields: ImageFormatFields) -> ImageBytes:
    """A finished image or a preview in the ``output_format`` asked (PNG as painted; jpeg and webp re-encoded
    on a thread, at ``output_compression``)."""
    if fields.output_format == "png":
        return image
    data = await asyncio.to_thread(encode_as, image.data, fields.output_format, fields.output_compression)
    return dataclasses.replace(image, data=data)


async def _paint(engine: ChameleonEngine, pieces: list[str | ImageCodes]) -> list[Piece]:
    """Replace finished image spans by their PNGs (one batched decode for all of them)."""
    spans = [p for p in pieces if isinstance(p, ImageCodes)]
    if not spans:
        return list(pieces)  # type: ignore[arg-type]
    start = time.perf_counter()
    pngs = iter(await engine.paint_images(spans))
    metrics.record_images_generated(len(spans), time.perf_counter() - start)
    return [PNG(next(pngs)) if isinstance(p, ImageCodes) else p for p in pieces]


async def stream_deltas(engine: ChameleonEngine, request: RequestContext,
                        partial_images: int = 0) -> AsyncIterator[list[ChoiceDelta]]:
    """Per-choice deltas; with ``partial_images`` K, up to K previews of each image precede it."""
    params = request.params
    splitters: dict[int, SpanSplitter] = {}
    previews: dict[int, ImagePreviews] = {}
    # Stop strings that vLLM reports without holding text back (image replies: see StopTextHold).
    holds = {i: StopTextHold(params.stop) for i in range(params.n)} if params.include_stop_str_in_output else {}
    grid = request.options.image_grid or engine.image_grid
    previewing = (partial_images, grid) if partial_images and grid else None
    if request.options.guided:
        metrics.record_guided_request()
    try:
        async for out in engine.generate(request.prompt.token_ids, params, request.request_id):
            yield [await _delta(engine, o, splitters, previews, previewing, holds.get(o.index))
                   for o in out.outputs]
    finally:
        for p in previews.values():
            p.close()


async def _delta(engine: ChameleonEngine, o, splitters: dict[int, SpanSplitter],
                 previews: dict[int, ImagePreviews], partial_images: tuple[int, tuple[int, int]] | None,
                 hold: StopTextHold | None) -> ChoiceDelta:
    """One choice's new tokens as pieces (text, finished images as PNG, and previews first);
    ``partial_images``: how many previews of each image, and the grid it is written in."""
    if o.index not in splitters:  # one splitter per choice, built once, not per token
        splitters[o.index] = SpanSplitter(engine.layout, engine.tokenizer.decode)
        if partial_images:
            count, grid = partial_images
            previews[o.index] = ImagePreviews(functools.partial(engine.paint_preview, grid=grid), grid, count)
    splitter = splitters[o.index]
    image_mask = engine.layout.span_mask(o.token_ids, open_span=splitter.in_span)
    pieces = splitter.feed(o.token_ids, o.text)
    if o.finish_reason is not None:
        pieces += splitter.finish()
    if hold is not None:
        pieces = hold.feed(pieces, o.stop_reason, finished=o.finish_reason is not None, image_open=splitter.in_span)
    metrics.record_image_tokens(sum(image_mask))
    # Previews belong to the span open when this delta began, so they come before its pieces.
    early = await previews[o.index].follow(splitter.open_span) if o.index in previews else []
    return ChoiceDelta(o.index, [*early, *await _paint(engine, pieces)], list(o.token_ids),
                       _finish(o.finish_reason), o.logprobs, image_mask)
