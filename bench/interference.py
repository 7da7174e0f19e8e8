"""Inter-token latency of text streams alone and beside other traffic (text, image rows, image-out and its decodes).

Background workers start staggered and keep sending until the measured text level ends, so
image decodes (VQGAN + PNG) land all through the measured window. Two controls: text beside
text grows the batch by text rows; beside image rows cut one code short of an image
(``workloads.image_rows_chat``) the engine samples image rows as image-out does, but nothing
is decoded. So ``with image-out / with image rows`` is the decode's own cost to text streams,
``with image rows / with text`` what image rows cost the engine's step over text rows, and
``with image-out / alone`` what a user sees.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from bench.loadgen import run_level, send
from bench.stats import summarize
from bench.workloads import Workload


async def _background(client: httpx.AsyncClient, model: str, workload: Workload, concurrency: int,
                      stagger_s: float) -> None:
    async def worker(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        i = k
        while True:
            await send(client, model, workload.build(i))
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def text_beside(client: httpx.AsyncClient, model: str, text: Workload, background: Workload | None,
                      concurrency: int, requests: int, settle_s: float = 8.0, stagger_s: float = 1.0) -> dict:
    """Figures of ``requests`` text streams at ``concurrency`` while ``background`` runs at the same concurrency."""
    task = None
    if background is not None:
        task = asyncio.create_task(_background(client, model, background, concurrency, stagger_s))
        await asyncio.sleep(settle_s)
    try:
        records, duration = await run_level(client, model, text, concurrency, requests)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return summarize(records, duration)
