"""Emu3 image-out: our server beside the authors' transformers loop (``bench/emu3_baseline.py``), same tiny
Emu3 checkpoint, same machine, in pairs (the loop, then our server at c=1 and at c=8, back to back), with the
authors' guidance (cfg 3.0 from their negative prompt, our server's Emu3 default) and without. Writes
OUT/emu3.json and prints it.

    python bench/emu3.py [--model DIR] [--out bench/out/emu3] [--concurrency 1 8]
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

from bench import emu3_baseline
from bench.loadgen import client_for, run_level
from bench.runargs import parse_run_args
from bench.servers import serve
from bench.stats import ratio, summarize
from bench.workloads import guided_image_out_chat
from engine.offline.tiny import TinySpec

SPEC = TinySpec(grid=32, family="emu3")  # 32 x 32 codes (256 px) an image: Chameleon's tiny span length
ROUNDS, LOOP_IMAGES, REQUESTS_PER_SLOT = 2, 2, 2


async def _ours(url: str, cfg_scale: float, concurrency: int) -> float:
    async with client_for(url, "bench") as client:
        work = guided_image_out_chat(cfg_scale)
        await run_level(client, "tiny", work, 1, 1)  # warm-up
        records, seconds = await run_level(client, "tiny", work, concurrency, REQUESTS_PER_SLOT * concurrency)
        summary = summarize(records, seconds)
        if summary.get("errors"):
            raise RuntimeError(f"image-out failed: {summary['errors']}")
        return summary["images_per_s"]


def run(model_dir: Path, out: Path, levels: list[int]) -> dict:
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "spec": str(SPEC),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_before": os.getloadavg()}
    with serve("chameleon-serve", model_dir, out / "server.log") as ours:
        result["engine_start_s"] = round(ours.start_s, 1)
        for cfg_scale in (3.0, 1.0):
            pairs = []
            for _ in range(ROUNDS):
                loop = emu3_baseline.images_per_s(model_dir, LOOP_IMAGES, cfg_scale)["images_per_s"]
                pair = {"loop_images_per_s": loop}
                for c in levels:
                    pair[f"ours_c{c}_images_per_s"] = asyncio.run(_ours(ours.url, cfg_scale, c))
                    pair[f"ratio_c{c}"] = ratio(pair[f"ours_c{c}_images_per_s"], loop)
                pairs.append(pair)
            result[f"cfg_{cfg_scale:g}"] = {"pairs": pairs, **{f"median_ratio_c{c}": float(np.median(
                [p[f"ratio_c{c}"] for p in pairs])) for c in levels}}
    result["load_after"] = os.getloadavg()
    return result


def main() -> None:
    args = parse_run_args(__doc__.splitlines()[0], "bench/out/emu3", SPEC, levels=[1, 8])
    result = run(args.model_dir, args.out, args.levels)
    (args.out / "emu3.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
