"""Inter-token latency of text streams alone and beside other traffic (text, image rows, image-out and its decodes).

Background workers start staggered and keep sending until the measured text level ends, so
image decodes (VQGAN + PNG) land all through the measured window. Two controls: text beside
text grows the batch by text rows; beside image rows cut one code short of an image
(``workloads.image_rows_chat``) the engine samples image rows as image-out does, but nothing
is decoded. So ``with image-out / with image rows`` is the decode's own cost to text streams,
``with image rows / with text`` what image rows cost the engine's step over text rows, and
``with image-out / alone`` what a user sees. Text streams are timed per token through vLLM's
``return_token_ids`` (``workloads.text_chat``), so any server with that extension will do: ours, a GPU
deployment of it, vLLM's own:

    python bench/interference.py --url http://127.0.0.1:8000 --api-key KEY [--image-tokens 1026] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make ``bench.*`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import client_for, resolve_model, run_level, send
from bench.stats import ratio, summarize
from bench.workloads import Workload, image_out_chat, image_rows_chat, text_chat
from engine.shared.span_format import SpanFormat

CHAMELEON_IMAGE_TOKENS = SpanFormat(native_grid=32).image_tokens()  # Chameleon's and Anole's 32 x 32 codes


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


async def phases(url: str, api_key: str, model: str | None, text_tokens: int, image_tokens: int, concurrency: int,
                 requests: int, settle_s: float = 8.0) -> dict:
    """Text streams alone, then beside text (the batch grows), image rows cut short (the batch grows by image
    rows, nothing is decoded) and image-out (the same, with every image decoded): ``image_tokens`` from BOI
    to EOI."""
    text = text_chat(text_tokens, token_ids=True)
    backgrounds = {"alone": None, "with_text": text, "with_image_rows": image_rows_chat(image_tokens),
                   "with_image_out": image_out_chat()}
    async with client_for(url, api_key) as client:
        model = await resolve_model(client, model)
        await run_level(client, model, text, 1, 1)  # warm-up
        return {name: await text_beside(client, model, text, bg, concurrency, requests, settle_s)
                for name, bg in backgrounds.items()}


def p99_ratios(figures: dict) -> dict[str, float | None]:
    """Text ITL p99 beside image-out over each of the other phases of :func:`phases`."""
    p99 = {name: (f["itl_s"] or {}).get("p99") for name, f in figures.items()}
    return {f"itl_p99_with_image_out_vs_{other}": ratio(p99["with_image_out"], p99[other])
            for other in ("alone", "with_text", "with_image_rows")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", default=None, help="default: the first of /v1/models")
    parser.add_argument("--concurrency", type=int, default=8, help="text streams, and as many in the background")
    parser.add_argument("--requests", type=int, default=48, help="measured text requests per phase")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens of text replies")
    parser.add_argument("--image-tokens", type=int, default=CHAMELEON_IMAGE_TOKENS,
                        help="one image, BOI to EOI, as the server writes it by default")
    parser.add_argument("--settle-s", type=float, default=8.0, help="background time before each measurement")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = asyncio.run(phases(args.url, args.api_key, args.model, args.max_tokens, args.image_tokens,
                                 args.concurrency, args.requests, args.settle_s))
    report = {"phases": figures, "ratios": p99_ratios(figures)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
