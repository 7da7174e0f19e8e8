"""Micro-batching of blocking work (VQ encode, VQ decode + PNG) across concurrent requests.

Items from many requests queue up; a single worker task takes everything queued
(up to ``max_batch``) and runs it as one call in a thread, so the event loop never
blocks. No waiting window: a lone request pays no delay, and items that arrive
while a batch runs form the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

logger = logging.getLogger(__name__)


class MicroBatcher(Generic[In, Out]):
    def __init__(self, work: Callable[[list[In]], list[Out]], max_batch: int = 16) -> None:
        self._work = work
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: list[In]) -> list[Out]:
        """Results for ``items``, in order; cancelling the caller drops its items from later batches."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._max_batch:
                batch.append(self._queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self._work, [item for item, _ in live])
            except Exception as exc:  # a failed batch fails its requests, not the batcher
                logger.exception("batched work failed")
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
