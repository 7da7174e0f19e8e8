"""Engine start time, text throughput and image throughput of the server on the tiny checkpoint.

Starts ``chameleon-serve`` as a user would (eager, CPU), times it to a healthy
``/health``, then through the ``openai`` client: greedy chat requests with
``ignore_eos`` (output tokens/s) and ``modalities: ["image"]`` requests (images/s,
each image BOI + 1024 codes + EOI then a VQGAN decode to PNG), at several concurrencies.

    python bench/tiny_engine.py [--model DIR] [--tokens 128] [--concurrency 1 8 16] [--image-concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=1200)


async def _throughput(url: str, concurrency: int, tokens: int, rounds: int = 2) -> float:
    async with _client(url) as client:
        return await _timed(lambda i: _chat_tokens(client, i, tokens), concurrency * rounds)


async def _chat_tokens(client: openai.AsyncOpenAI, i: int, tokens: int) -> int:
    r = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Benchmark request {i}"}], temperature=0,
        max_tokens=tokens, extra_body={"ignore_eos": True, "min_tokens": tokens})
    return r.usage.completion_tokens


async def _draw(client: openai.AsyncOpenAI, i: int) -> int:
    r = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Draw picture {i}"}], modalities=["image"], seed=i)
    return sum(1 for p in r.choices[0].message.content if p["type"] == "image_url")


async def _timed(one, count: int) -> float:
    """Units of work per second over ``count`` concurrent calls of ``one(i)``, after one warm-up call."""
    await one(-1)
    start = time.perf_counter()
    produced = sum(await asyncio.gather(*[one(i) for i in range(count)]))
    return produced / (time.perf_counter() - start)


async def _images_per_s(url: str, concurrency: int, rounds: int = 2) -> float:
    async with _client(url) as client:
        return await _timed(lambda i: _draw(client, i), concurrency * rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint dir (default: a fresh tiny checkpoint)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--image-concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    model = args.model
    if model is None:
        from engine.tiny import make_tiny

        model = str(make_tiny(Path(tempfile.mkdtemp()) / "tiny"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "server.cli", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "tiny", "--enforce-eager", "--max-model-len", "4096"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        started_s = time.perf_counter() - start
        results = {"engine_start_s": round(started_s, 1), "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                   "tokens_per_request": args.tokens, "output_tok_per_s": {}, "images_per_s": {}}
        for c in args.concurrency:
            results["output_tok_per_s"][str(c)] = round(asyncio.run(_throughput(url, c, args.tokens)), 1)
        for c in args.image_concurrency:
            results["images_per_s"][str(c)] = round(asyncio.run(_images_per_s(url, c)), 3)
        print(json.dumps(results, indent=2))
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
