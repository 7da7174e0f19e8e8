"""Guided image-out on its own: our server's guided and unguided image-out at each concurrency level, beside
the two-forward transformers loop (``bench.hf_baseline.guided_images_per_s``); the guidance figures of
bench/RESULTS.md. Writes OUT/guided.json and prints it.

    python bench/guided.py [--model DIR] [--out bench/out/guided] [--concurrency 1 8 32]
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.*`` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hf_baseline
from bench.loadgen import sweep
from bench.runargs import parse_run_args
from bench.servers import serve
from bench.workloads import guided_image_out_chat, image_out_chat

CFG_SCALE = 3.0


def run(model_dir: Path, out: Path, levels: list[int]) -> dict:
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_before": os.getloadavg()}
    result["two_forward_loop"] = hf_baseline.guided_images_per_s(model_dir, CFG_SCALE)
    with serve("chameleon-serve", model_dir, out / "server.log") as ours:
        report = asyncio.run(sweep(ours.url, "bench", "tiny", [guided_image_out_chat(CFG_SCALE), image_out_chat()],
                                   levels))
    result["images_per_s"] = {name: {c: s.get("images_per_s") for c, s in by_level.items()}
                              for name, by_level in report["workloads"].items()}
    loop = result["two_forward_loop"]["images_per_s"]
    result["guided_vs_two_forward_loop"] = {c: round(v / loop, 3) for c, v in
                                            result["images_per_s"]["guided-image-out"].items() if v}
    result["load_after"] = os.getloadavg()
    result["report"] = report
    return result


def main() -> None:
    args = parse_run_args(__doc__.splitlines()[0], "bench/out/guided")
    result = run(args.model_dir, args.out, args.levels)
    (args.out / "guided.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=2))


if __name__ == "__main__":
    main()
