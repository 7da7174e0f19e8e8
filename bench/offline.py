"""vLLM offline (``LLM.generate``) writing images with our plugin and span processor: the ceiling of the server.

The same image-only requests as the server's image-out workload, as the server sends them to its engine
(vLLM greedy, the span processor sampling every code at the family defaults, no detokenizing, one seed per
request), the same engine flags and executor, but no HTTP, no front end and no VQGAN decode: what the
engine alone gives at a batch of ``--batch`` rows, so ``images/s ours / images/s here`` is the share of the
engine's throughput that reaches clients. Runs in its own process (vLLM's engine), one JSON line out:

    python bench/offline.py MODEL_DIR [--batch 8] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# What ENGINE_FLAGS and the executor set, handed to LLM (which builds its own EngineArgs)
_ENGINE_FIELDS = ("model", "dtype", "enforce_eager", "max_model_len", "max_num_seqs", "distributed_executor_backend")


def images_per_s(model_dir: str | Path, batch: int = 8, requests: int = 16) -> dict:
    """Run this script on ``model_dir`` in a child process and return its figures."""
    out = subprocess.run([sys.executable, __file__, str(model_dir), "--batch", str(batch), "--requests", str(requests)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(model_dir: Path, batch: int, requests: int) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from bench.servers import ENGINE_FLAGS
    from engine.shared.vocab import TokenLayout
    from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1
    from server.cli import model_in_engine_core

    cli = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(
        ["--model", str(model_dir), *ENGINE_FLAGS, "--max-num-seqs", str(batch)])
    args = model_in_engine_core(EngineArgs.from_cli_args(cli))  # the servers' flags and executor
    llm = LLM(**{k: getattr(args, k) for k in _ENGINE_FIELDS}, logits_processors=[ChameleonSpanLogitsProcessorV1])
    layout, tokenizer = TokenLayout.from_checkpoint(model_dir), AutoTokenizer.from_pretrained(model_dir)
    span = layout.span.image_tokens()

    def prompt(i: int) -> dict:
        text = tokenizer.encode(f"Draw picture {i}.", add_special_tokens=False)
        return {"prompt_token_ids": [tokenizer.bos_token_id, *text, layout.sep]}

    def params(i: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, seed=i, max_tokens=span, stop_token_ids=[layout.eoi],
                              detokenize=False, extra_args={"modalities": ["image"]})

    llm.generate([prompt(requests)], [params(requests)], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate([prompt(i) for i in range(requests)], [params(i) for i in range(requests)], use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    if any(len(o.outputs[0].token_ids) != span for o in outs):
        raise RuntimeError("an offline image span came out short")
    return {"batch": batch, "requests": requests, "seconds": round(elapsed, 2),
            "images_per_s": round(requests / elapsed, 4), "tokens_per_s": round(tokens / elapsed, 1),
            "executor": args.distributed_executor_backend or "vLLM's default"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batch", type=int, default=8, help="max_num_seqs: the rows of one step")
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(_run(args.model_dir, args.batch, args.requests)))


if __name__ == "__main__":
    main()
