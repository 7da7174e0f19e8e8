"""Asyncio load generator for any OpenAI-compatible server: text, image-in, image-out and mixed chat.

For each workload and concurrency level, ``concurrency`` workers send streamed requests
until ``--requests`` are done, then the level's figures (requests/s, images/s, output
tokens/s; TTFT, inter-token latency, end-to-end and request-to-PNG at p50/p90/p99) go
to a JSON report, and a PNG plot of them against concurrency is written beside it.
Inter-token latency is the gap between chunks that carry text, as in vLLM's ``bench serve``,
or tokens where a request asks for their ids (``workloads.text_chat``).

    python bench/loadgen.py --url http://127.0.0.1:8000 [--api-key KEY] [--model NAME] \\
        [--workloads text image-in image-out mix] [--concurrency 1 8 32] [--requests N] [--out bench/out/loadgen]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make ``bench.*`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import Record, summarize
from bench.workloads import Call, Workload, standard


def client_for(url: str, api_key: str) -> httpx.AsyncClient:
    """A client of ``url``'s /v1 routes: httpx and a lean SSE reader rather than the ``openai`` client, whose
    parsing took 155-200 us of CPU per streamed token on the 2-core box (105-135 us this way): at thousands of
    tokens/s the load generator shares the server's cores, and its own delays show up in what it measures."""
    return httpx.AsyncClient(base_url=f"{url.rstrip('/')}/v1", headers={"Authorization": f"Bearer {api_key}"},
                             timeout=1800, limits=httpx.Limits(max_connections=None))


def _is_image(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") == "image_url"


def _describe(error: dict) -> str:
    """An OpenAI-style error object (``{"type", "message", ...}``) as one line."""
    return f"{error.get('type')}: {str(error.get('message'))[:200]}"


def _refusal(status: int, body: bytes) -> str:
    try:
        return f"HTTP {status} {_describe(json.loads(body)['error'])}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {status}: {body[:200]!r}"


async def _events(response: httpx.Response) -> AsyncIterator[dict]:
    """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


async def send(client: httpx.AsyncClient, model: str, call: Call) -> Record:
    """One streamed request, timed chunk by chunk; a failure is recorded, not raised."""
    rec = Record()
    start = time.perf_counter()
    last_token: float | None = None
    args = dict(call.args)
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, **args.pop("extra_body", {}),
            **args}
    path, field = ("/chat/completions", "delta") if call.route == "chat" else ("/completions", None)
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                rec.error = _refusal(response.status_code, await response.aread())
                return rec
            async for event in _events(response):
                now = time.perf_counter()
                if "error" in event:  # a failure after the stream began: the server's final error event
                    rec.error = f"mid-stream {_describe(event['error'])}"
                    break
                if event.get("usage"):
                    rec.output_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or ():
                    content = choice[field].get("content") if field else choice.get("text")
                    if not content and not choice.get("token_ids"):  # token ids: see workloads.text_chat
                        continue
                    if rec.ttft is None:
                        rec.ttft = now - start
                    if isinstance(content, list):  # a finished image arrives as a one-part list
                        rec.png += [now - start for part in content if _is_image(part)]
                        last_token = None  # the gap across an image is not an inter-token latency
                        continue
                    if last_token is not None:
                        rec.itl.append(now - last_token)
                    last_token = now
        rec.ok = rec.error is None
    except (httpx.HTTPError, ValueError) as e:
        rec.error = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        rec.e2e = time.perf_counter() - start
    return rec


async def run_level(client: httpx.AsyncClient, model: str, workload: Workload, concurrency: int,
                    requests: int, bar: tqdm | None = None) -> tuple[list[Record], float]:
    """``requests`` calls by ``concurrency`` workers; returns the records and the wall time."""
    pending = iter(range(requests))
    records: list[Record] = []

    async def worker() -> None:
        for i in pending:  # a shared iterator: each index is taken once
            records.append(await send(client, model, workload.build(i)))
            if bar is not None:
                bar.update()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - start


def default_requests(concurrency: int) -> int:
    return max(2 * concurrency, 4)


async def resolve_model(client: httpx.AsyncClient, model: str | None) -> str:
    if model:
        return model
    response = await client.get("/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def sweep(url: str, api_key: str, model: str | None, workloads: list[Workload], levels: list[int],
                requests: int | None = None, warmup: int = 1) -> dict:
    """Every workload at every concurrency level, after ``warmup`` unmeasured requests per workload."""
    async with client_for(url, api_key) as client:
        model = await resolve_model(client, model)
        report = {"url": url, "model": model, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workloads": {}}
        total = sum(requests or default_requests(c) for c in levels) * len(workloads)
        with tqdm(total=total, desc="requests", unit="req") as bar:
            for w in workloads:
                await run_level(client, model, w, 1, warmup)
                report["workloads"][w.name] = {}
                for c in levels:
                    bar.set_postfix_str(f"{w.name} c={c}")
                    records, duration = await run_level(client, model, w, c, requests or default_requests(c), bar)
                    report["workloads"][w.name][str(c)] = summarize(records, duration)
        return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", default=None, help="default: the first of /v1/models")
    choices = list(standard(1))
    parser.add_argument("--workloads", nargs="+", default=choices, choices=choices)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=None, help="per level (default: max(2 x concurrency, 4))")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens of text replies")
    parser.add_argument("--out", default="bench/out/loadgen", help="writes OUT.json and OUT.png")
    args = parser.parse_args(argv)
    from bench.plot import plot_report  # matplotlib only when a plot is written

    catalog = standard(args.max_tokens)
    report = asyncio.run(sweep(args.url, args.api_key, args.model, [catalog[n] for n in args.workloads],
                               args.concurrency, args.requests))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot_report(report, out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
