"""Progressive previews of images being generated: up to K PNGs per image, decoded off the event loop.

Preview j of K is due once ``round(rows * j / (K + 1))`` whole rows of codes are known (at least
one, never all). At most one preview of an image decodes at a time (on the engine's painter
worker, batched with other decodes): previews that fall due meanwhile are merged into the next
one, which shows the latest rows. A slow decoder therefore means fewer previews, never a queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preview:
    """PNG bytes of an unfinished image; ``index`` counts the previews sent for that image from 0."""

    data: bytes
    index: int


class ImagePreviews:
    """One choice's previews: fed the splitter's open span after every delta."""

    def __init__(self, paint: Callable[[list[int]], Awaitable[bytes]], grid: tuple[int, int], count: int) -> None:
        rows, self._width = grid
        self._rows = rows
        self._due = [max(1, round(rows * j / (count + 1))) for j in range(1, count + 1)]  # rows known
        self._paint = paint
        self._span: list[int] | None = None  # the span followed (the splitter's live list)
        self._next = 0  # index in _due of the next preview due
        self._sent = 0
        self._task: asyncio.Task[bytes] | None = None

    async def follow(self, span: list[int] | None) -> list[Preview]:
        """Previews to send before this delta's pieces; ``span`` is the open span after the delta.

        Once the followed span has ended (its final image is among this delta's pieces), a preview
        still decoding is awaited, so every preview of an image precedes the image.
        """
        if self._span is not None and span is not self._span:
            ready = [await self._preview(self._task)] if self._task else []
            self._span, self._next, self._sent, self._task = None, 0, 0, None
        else:
            ready = [await self._preview(self._task)] if self._task and self._task.done() else []
        if span is not None:
            self._span = span
            self._start_due(span)
        return ready

    def close(self) -> None:
        """Drop a preview still decoding (the request ended or its client left)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _preview(self, task: asyncio.Task[bytes]) -> Preview:
        self._task = None
        preview = Preview(await task, self._sent)
        self._sent += 1
        return preview

    def _start_due(self, span: list[int]) -> None:
        rows = len(span) // self._width
        if self._task is not None or self._next >= len(self._due) or not self._due[self._next] <= rows < self._rows:
            return
        while self._next < len(self._due) and self._due[self._next] <= rows:
            self._next += 1
        self._task = asyncio.ensure_future(self._paint(span[:rows * self._width]))  # a copy: the span grows
