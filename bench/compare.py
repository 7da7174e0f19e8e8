"""``make bench``: chameleon-serve beside its baselines, same tiny checkpoint, same machine, as ratios.

In order, one thing at a time (2 cores): VQGAN decode batched vs single; the transformers
loop writing images; vLLM offline writing the same images with our plugin (the engine's
ceiling, bench/offline.py); our server and vLLM's own OpenAI server on the same checkpoint with our
plugin, both up (engine starts; the load generator's full sweep on ours; /v1/completions text on
theirs then ours, in pairs, as a closed loop at c=16 and as bursts of 16 one-token requests; text
inter-token latency beside text, image rows and image-out on ours; image-out at c=8 on ours in pairs
with the transformers loop, back to back; guided image-out); the output detokenizer's cost per image
of an interleaved reply, vLLM's and ours (bench/detokenize_bench.py).
Pairs, because this box's speed drifts by 15-25% over minutes: each ratio is the median of its pairs'.
Writes OUT/compare.json, OUT/loadgen.json and OUT/loadgen.png, and prints a summary.

    python bench/compare.py [--model DIR] [--out bench/out] [--concurrency 1 8 32]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``bench.*`` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import detokenize_bench, hf_baseline, interference, offline, vqgan_bench
from bench.loadgen import client_for, run_level, send, sweep
from bench.plot import plot_report
from bench.runargs import parse_run_args
from bench.servers import serve
from bench.stats import ratio, summarize
from bench.workloads import completions, guided_image_out_chat, image_out_chat, standard
from engine.shared.vocab import TokenLayout

TEXT_TOKENS = 128
TEXT_CONCURRENCY, TEXT_REQUESTS = 16, 64
ITL_CONCURRENCY, ITL_REQUESTS = 8, 48
PAIRED_ROUNDS, PAIRED_LOOP_IMAGES, PAIRED_REQUESTS = 3, 2, 16
BURSTS = 8
PROMPT = "Write a short story about the sea, the mountains and the stars at night."
CFG_SCALE = 3.0


def _prompt_ids(model_dir: Path) -> list[int]:
    """The completions prompt as token ids, so both servers read the very same prompt."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(PROMPT, add_special_tokens=True)


async def _completions(url: str, prompt_ids: list[int]) -> dict:
    async with client_for(url, "bench") as client:
        work = completions(prompt_ids, TEXT_TOKENS)
        await run_level(client, "tiny", work, 1, 2)  # warm-up
        return summarize(*await run_level(client, "tiny", work, TEXT_CONCURRENCY, TEXT_REQUESTS))


async def _burst_ttft(url: str, prompt_ids: list[int]) -> float:
    """TTFT p50 of ``TEXT_CONCURRENCY`` one-token requests sent at once, the median over ``BURSTS`` bursts.

    The front end's admission of new requests, with no streams to serve beside them: in the closed loop at
    c=16 a new request's first token also waits behind the other streams' tokens, as many more per second
    as the server is faster, on a core the load generator shares.
    """
    async with client_for(url, "bench") as client:
        work = completions(prompt_ids, 1)
        await send(client, "tiny", work.build(0))  # warm-up
        p50s = []
        for _ in range(BURSTS):
            records = await asyncio.gather(*(send(client, "tiny", work.build(i)) for i in range(TEXT_CONCURRENCY)))
            if not all(r.ok for r in records):
                raise RuntimeError(f"burst request failed: {next(r.error for r in records if not r.ok)}")
            p50s.append(float(np.median([r.ttft for r in records])))
        return float(np.median(p50s))


async def _image_out_c8(url: str) -> float:
    async with client_for(url, "bench") as client:
        records, seconds = await run_level(client, "tiny", image_out_chat(), 8, PAIRED_REQUESTS)
        return summarize(records, seconds)["images_per_s"]


def _paired_image_out(url: str, model_dir: Path) -> dict:
    """Target a) as pairs: the transformers loop, then our server at c=8, ``PAIRED_ROUNDS`` times in a row.

    This box's speed drifts by 15-25% over minutes; a ratio of two figures taken ten minutes apart
    measures that drift as much as the server. Within a pair the two run back to back (the server idles
    during the loop), and the median of the pairs' ratios is the figure.
    """
    pairs = []
    for _ in range(PAIRED_ROUNDS):
        loop = hf_baseline.images_per_s(model_dir, count=PAIRED_LOOP_IMAGES)["images_per_s"]
        ours = asyncio.run(_image_out_c8(url))
        pairs.append({"loop_images_per_s": loop, "ours_images_per_s": ours, "ratio": ratio(ours, loop)})
    return {"pairs": pairs, "median_ratio": float(np.median([p["ratio"] for p in pairs]))}


def _paired_text(ours: str, theirs: str, prompt_ids: list[int]) -> dict:
    """Target b) as pairs: vLLM's server then ours on the same /v1/completions load (the closed loop at c=16,
    then bursts of one-token requests), ``PAIRED_ROUNDS`` times."""
    pairs = []
    for _ in range(PAIRED_ROUNDS):
        vllm_c = asyncio.run(_completions(theirs, prompt_ids))
        ours_c = asyncio.run(_completions(ours, prompt_ids))
        vllm_b, ours_b = asyncio.run(_burst_ttft(theirs, prompt_ids)), asyncio.run(_burst_ttft(ours, prompt_ids))
        pairs.append({"vllm": vllm_c, "ours": ours_c, "vllm_burst_ttft_p50_s": vllm_b, "ours_burst_ttft_p50_s": ours_b,
                      "tokens_per_s_ratio": ratio(ours_c["output_tokens_per_s"], vllm_c["output_tokens_per_s"]),
                      "ttft_p50_ratio": ratio(ours_c["ttft_s"]["p50"], vllm_c["ttft_s"]["p50"]),
                      "burst_ttft_p50_ratio": ratio(ours_b, vllm_b)})
    return {"pairs": pairs, **{f"median_{k}": float(np.median([p[k] for p in pairs]))
                               for k in ("tokens_per_s_ratio", "ttft_p50_ratio", "burst_ttft_p50_ratio")}}


def run(model_dir: Path, out: Path, levels: list[int], log_dir: Path) -> dict:
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(model_dir),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_before": os.getloadavg()}
    result["vqgan_decode"] = vqgan_bench.batched_vs_single(model_dir)
    result["transformers_loop"] = hf_baseline.images_per_s(model_dir)
    result["transformers_guided_loop"] = hf_baseline.guided_images_per_s(model_dir, CFG_SCALE)
    result["vllm_offline_image_out"] = offline.images_per_s(model_dir, batch=8, requests=16)
    prompt_ids = _prompt_ids(model_dir)
    # Both servers stay up (an idle one takes ~1% of a core) so that text runs in pairs, side by side in time.
    with serve("chameleon-serve", model_dir, log_dir / "chameleon-serve.log") as ours, \
            serve("vllm", model_dir, log_dir / "vllm.log") as theirs:
        result["ours_start_s"], result["vllm_start_s"] = round(ours.start_s, 1), round(theirs.start_s, 1)
        report = asyncio.run(sweep(ours.url, "bench", "tiny", list(standard(TEXT_TOKENS).values()), levels))
        result["text_c16_paired"] = _paired_text(ours.url, theirs.url, prompt_ids)
        image_tokens = TokenLayout.from_checkpoint(model_dir).span.image_tokens()
        result["ours_itl"] = asyncio.run(interference.phases(ours.url, "bench", "tiny", TEXT_TOKENS, image_tokens,
                                                             ITL_CONCURRENCY, ITL_REQUESTS))
        result["image_out_c8_paired"] = _paired_image_out(ours.url, model_dir)
        guided = asyncio.run(sweep(ours.url, "bench", "tiny", [guided_image_out_chat(CFG_SCALE)], levels))
        result["ours_guided"] = guided["workloads"]["guided-image-out"]
    result["detokenize_per_image_ms"] = detokenize_bench.per_image_ms(model_dir)
    result["load_after"] = os.getloadavg()
    (out / "loadgen.json").write_text(json.dumps(report, indent=2))
    plot_report(report, out / "loadgen.png")
    image_c8 = report["workloads"]["image-out"].get("8", {}).get("images_per_s")
    text = result["text_c16_paired"]
    result["ratios"] = {
        "image_out_c8_vs_transformers_loop": ratio(image_c8, result["transformers_loop"]["images_per_s"]),
        "image_out_c8_vs_transformers_loop_paired_median": result["image_out_c8_paired"]["median_ratio"],
        "image_out_c8_vs_vllm_offline_batch8": ratio(image_c8, result["vllm_offline_image_out"]["images_per_s"]),
        "text_c16_tokens_per_s_vs_vllm_paired_median": text["median_tokens_per_s_ratio"],
        "text_c16_ttft_p50_vs_vllm_paired_median": text["median_ttft_p50_ratio"],
        "text_burst16_ttft_p50_vs_vllm_paired_median": text["median_burst_ttft_p50_ratio"],
        "vqgan_batched_vs_single": result["vqgan_decode"]["batched_over_single"],
        **interference.p99_ratios(result["ours_itl"]),
        **{f"guided_image_out_c{c}_vs_two_forward_loop": ratio(
            result["ours_guided"].get(str(c), {}).get("images_per_s"),
            result["transformers_guided_loop"]["images_per_s"]) for c in levels},
    }
    result["image_out_c8_images_per_s"] = image_c8
    return result


def main() -> None:
    args = parse_run_args(__doc__.splitlines()[0], "bench/out")
    result = run(args.model_dir, args.out, args.levels, args.out / "logs")
    (args.out / "compare.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("date", "machine", "load_before", "load_after", "ours_start_s",
                                             "vllm_start_s", "image_out_c8_images_per_s", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
