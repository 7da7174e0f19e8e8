"""Speculative Jacobi decoding of image spans (``engine/worker/jacobi.py``) against SJD off, offline, in one run:
engine steps (forward passes) per image and images/s at c=1 and at c=32, on an input-independent tiny checkpoint
(every position draws from one distribution, so SJD keeps nearly every draft: its best case) and on a
random-weights one. Writes OUT/jacobi.json and prints a table.

    python bench/jacobi.py [--out bench/out/jacobi] [--grid 32] [--images 4] [--concurrency 32] [--rounds 2]
                           [--repeats 2]

One engine per (checkpoint, SJD on/off, repeat), each in its own child process, one after another, the two
sides alternating which goes first (on, off, off, on, ...) and their rounds pooled over the repeats, so that a
drift of the box's speed during the run falls on both sides alike: SJD on is vLLM's
speculative path with our proposer at ``--budget`` draft tokens per step (default: the CPU's,
``engine.shared.jacobi.default_budget``); SJD off is the plain engine, no speculative config. The child drives
``llm.llm_engine`` itself (``add_request``, then ``step()`` until all finish) and counts the EngineCore's steps
that ran the model, so step counts are exact. Requests as ``bench/offline.py`` sends them: image-only, the
family's sampling defaults, one seed each; SJD-on requests ask for window ``--window`` (1 = off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.*`` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.shared.jacobi import MAX_WINDOW, default_budget

CHECKPOINTS = ("independent", "random")


def _child(model_dir: Path, budget: int, window: int, images: int, concurrency: int, rounds: int) -> dict:
    """Start one engine, warm it with one image, then ``images`` sequential images and ``rounds`` batches of
    ``concurrency`` images; shut it down. Figures per round."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    from engine.shared.jacobi import speculative_settings
    from engine.shared.vocab import TokenLayout
    from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1
    from server.cli import model_in_engine_core

    spec, extra = speculative_settings(budget)
    args = model_in_engine_core(EngineArgs(model=str(model_dir), dtype="float32", max_model_len=4096,
                                           enforce_eager=True, max_num_seqs=concurrency, seed=0))
    start = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=True,
              max_num_seqs=concurrency, seed=0, distributed_executor_backend=args.distributed_executor_backend,
              logits_processors=[ChameleonSpanLogitsProcessorV1], speculative_config=spec, additional_config=extra)
    started_s = time.perf_counter() - start
    engine = llm.llm_engine
    core = getattr(engine.engine_core, "engine_core", None)  # the in-process EngineCore (model_in_engine_core)
    if core is None:
        raise RuntimeError("the EngineCore runs in another process: its steps cannot be counted here")
    executed = [0]
    step_fn = core.step_fn

    def counted():
        outputs, model_executed = step_fn()
        executed[0] += bool(model_executed)
        return outputs, model_executed

    core.step_fn = counted
    layout, tokenizer = TokenLayout.from_checkpoint(model_dir), AutoTokenizer.from_pretrained(model_dir)
    span = layout.span.image_tokens()
    xa = {"modalities": ["image"], **({"jacobi_window": window} if spec is not None else {})}
    issued = [0]

    def round_of(n: int) -> dict:
        """``n`` image requests at once, driven to the end: seconds and model-running engine steps."""
        for _ in range(n):
            i = issued[0] = issued[0] + 1
            text = tokenizer.encode(f"Draw picture {i}.", add_special_tokens=False)
            engine.add_request(f"img-{i}", {"prompt_token_ids": [tokenizer.bos_token_id, *text, layout.sep]},
                               SamplingParams(temperature=0.0, seed=i, max_tokens=span, stop_token_ids=[layout.eoi],
                                              detokenize=False, extra_args=xa))
        steps0, t0, lengths = executed[0], time.perf_counter(), []
        while engine.has_unfinished_requests():
            lengths += [len(o.outputs[0].token_ids) for o in engine.step() if o.finished]
        seconds = time.perf_counter() - t0
        if lengths != [span] * n:
            raise RuntimeError(f"image spans of {sorted(set(lengths))} tokens, expected {n} of {span}")
        return {"images": n, "seconds": round(seconds, 3), "engine_steps": executed[0] - steps0}

    round_of(1)  # warm-up
    result = {"budget": budget, "window": window if spec is not None else 1, "span_tokens": span,
              "engine_start_s": round(started_s, 1),
              "async_scheduling": bool(engine.vllm_config.scheduler_config.async_scheduling),
              "c1": [round_of(1) for _ in range(images)],
              f"c{concurrency}": [round_of(concurrency) for _ in range(rounds)]}
    engine.engine_core.shutdown()
    return result


def _side(rounds: list[dict], span: int) -> dict:
    """One engine's rounds at one level: images, mean steps per round, tokens committed per step, wall time per
    step, images/s."""
    images, seconds = sum(r["images"] for r in rounds), sum(r["seconds"] for r in rounds)
    steps = sum(r["engine_steps"] for r in rounds) / len(rounds)
    ms_per_step = 1000 * seconds / (steps * len(rounds))
    return {"images": images, "steps_per_round": round(steps, 1), "ms_per_step": round(ms_per_step, 2),
            "tokens_per_step": round(rounds[0]["images"] * span / steps, 2), "images_per_s": round(images / seconds, 4)}


def run(out: Path, grid: int, budget: int, window: int, images: int, concurrency: int, rounds: int,
        repeats: int) -> dict:
    from engine.offline.tiny import TinySpec, make_tiny

    specs = {"independent": TinySpec(grid=grid, input_independent=True), "random": TinySpec(grid=grid)}
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "load_before": os.getloadavg(),
                    "grid": grid, "budget": budget, "window": window, "repeats": repeats,
                    "runs": {f"{name}/{sjd}": [] for name in CHECKPOINTS for sjd in ("on", "off")}}
    for name in CHECKPOINTS:
        model_dir = out / name
        if not (model_dir / "config.json").exists():
            make_tiny(model_dir, specs[name])
        for repeat in range(repeats):
            sides = (("on", budget), ("off", 0))
            for sjd, b in sides if repeat % 2 == 0 else reversed(sides):
                cmd = [sys.executable, __file__, "--child", str(model_dir), "--budget", str(b), "--window",
                       str(window), "--images", str(images), "--concurrency", str(concurrency), "--rounds",
                       str(rounds)]
                with (out / f"{name}-{sjd}-{repeat}.log").open("w") as log:
                    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
                result["runs"][f"{name}/{sjd}"].append(json.loads(done.stdout.strip().splitlines()[-1]))
    result["load_after"] = os.getloadavg()
    result["summary"] = _compare(result["runs"], concurrency)
    return result


def _compare(runs: dict, concurrency: int) -> dict:
    """Per checkpoint and level: each side's figures over its repeats and the ratios of the issue's criteria."""
    summary = {}
    for name in CHECKPOINTS:
        for level in ("c1", f"c{concurrency}"):
            on, off = (_side([r for run in runs[f"{name}/{k}"] for r in run[level]],
                             runs[f"{name}/{k}"][0]["span_tokens"]) for k in ("on", "off"))
            summary[f"{name}/{level}"] = {
                "on": on, "off": off, "fewer_steps": round(off["steps_per_round"] / on["steps_per_round"], 2),
                "images_per_s_ratio": round(on["images_per_s"] / off["images_per_s"], 3)}
    return summary


HEADER = ("| checkpoint | c | SJD | images | engine steps per round (mean) | tokens per step | ms per step "
          "| images/s | steps off/on | images/s on/off |")


def _verdict(value: float, floor: float, what: str) -> str:
    return f"{value}× {what} (criterion >= {floor}×: {'met' if value >= floor else 'NOT met'})"


def table(result: dict, concurrency: int) -> str:
    """The markdown table of bench/RESULTS.md, then the issue's criteria, met or not."""
    rows = [HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        name, level = key.split("/")
        for sjd in ("on", "off"):
            f = s[sjd]
            ratios = f"**{s['fewer_steps']}×** | **{s['images_per_s_ratio']}×**" if sjd == "on" else " | "
            label = f"on (budget {result['budget']}, L={result['window']})" if sjd == "on" else "off"
            rows.append(f"| {name} | {level[1:]} | {label} | {f['images']} | {f['steps_per_round']} | "
                        f"{f['tokens_per_step']} | {f['ms_per_step']} | {f['images_per_s']} | {ratios} |")
    one = result["summary"]["independent/c1"]
    rows += ["", (f"c=1, independent: forward passes {_verdict(one['fewer_steps'], 8, 'fewer')}; "
                  f"images/s {_verdict(one['images_per_s_ratio'], 3, 'SJD off')}")]
    rows += [f"c={concurrency}, {name}: images/s "
             f"{_verdict(result['summary'][f'{name}/c{concurrency}']['images_per_s_ratio'], 0.95, 'SJD off')}"
             for name in CHECKPOINTS]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out/jacobi")
    parser.add_argument("--grid", type=int, default=32, help="codes per image side of the tiny checkpoints")
    parser.add_argument("--budget", type=int, default=default_budget("cpu"), help="SJD's draft tokens per step")
    parser.add_argument("--window", type=int, default=MAX_WINDOW, help="the SJD-on requests' jacobi_window")
    parser.add_argument("--images", type=int, default=4, help="sequential images at c=1, per engine")
    parser.add_argument("--concurrency", type=int, default=32, help="images at once in the batched rounds")
    parser.add_argument("--rounds", type=int, default=2, help="batched rounds per engine")
    parser.add_argument("--repeats", type=int, default=2, help="engines per side and checkpoint, alternating")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one engine on this checkpoint
    args = parser.parse_args()
    if args.concurrency < 2 or min(args.images, args.rounds, args.repeats) < 1:
        parser.error("--concurrency must be >= 2 (c=1 is measured apart), --images, --rounds, --repeats >= 1")
    if args.child:
        print(json.dumps(_child(args.child, args.budget, args.window, args.images, args.concurrency, args.rounds)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(out, args.grid, args.budget, args.window, args.images, args.concurrency, args.rounds,
                 args.repeats)
    (out / "jacobi.json").write_text(json.dumps(result, indent=2))
    print(table(result, args.concurrency))
    print(f"JSON: {out / 'jacobi.json'}")


if __name__ == "__main__":
    main()
