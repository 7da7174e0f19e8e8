"""Front-end CPU per generated image of an interleaved (text + image) reply: vLLM's fast incremental
detokenizer vs ours (``engine/frontend/detokenize.py``), which keeps span tokens out of the decode stream.

A reply of text, one image of ``codes`` codes, then text, fed one token per step as the engine hands
them over; the time of the whole reply, median of a few runs. In-process, a second or two:

    python bench/detokenize_bench.py MODEL_DIR [--codes 1024 4096]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = " Once upon a time there was a fox."


def engine_request(prompt_ids: list[int], request_id: str = "r", **sampling):
    """The ``EngineCoreRequest`` a detokenizer is built from: a text prompt, ``SamplingParams(**sampling)``."""
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    return EngineCoreRequest(request_id=request_id, prompt_token_ids=prompt_ids, mm_features=None,
                             sampling_params=SamplingParams(**sampling), pooling_params=None,
                             arrival_time=time.time(), lora_request=None, cache_salt=None,
                             data_parallel_rank=None, external_req_id=request_id)


def _reply_seconds(detokenizer_cls, tokenizer, reply: list[int], *extra) -> float:
    detokenizer = detokenizer_cls(tokenizer, engine_request([tokenizer.bos_token_id], stop=["\n\n"]), *extra)
    start = time.perf_counter()
    for token in reply:
        detokenizer.update([token], False)
    return time.perf_counter() - start


def per_image_ms(model_dir: str | Path, code_counts: tuple[int, ...] = (1024, 4096), repeats: int = 3) -> dict:
    """Milliseconds of detokenizing per reply (text, one image, text), vLLM's and ours, per image size."""
    from vllm.tokenizers import get_tokenizer
    from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

    from engine.frontend.client import codes_as_special
    from engine.frontend.detokenize import SpanSkippingDetokenizer
    from engine.shared.vocab import TokenLayout

    layout = TokenLayout.from_checkpoint(model_dir)
    tokenizer = codes_as_special(get_tokenizer(str(model_dir)), layout)
    text = tokenizer.encode(TEXT, add_special_tokens=False)
    rng = random.Random(0)
    figures = {}
    for count in code_counts:
        reply = [*text, layout.boi, *(rng.choice(layout.code_to_id) for _ in range(count)), layout.eoi, *text]
        theirs = statistics.median(_reply_seconds(FastIncrementalDetokenizer, tokenizer, reply) for _ in range(repeats))
        ours = statistics.median(_reply_seconds(SpanSkippingDetokenizer, tokenizer, reply, layout)
                                 for _ in range(repeats))
        figures[str(count)] = {"vllm_ms": round(theirs * 1e3, 2), "ours_ms": round(ours * 1e3, 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--codes", type=int, nargs="+", default=[1024, 4096], help="codes per image")
    args = parser.parse_args()
    print(json.dumps(per_image_ms(args.model_dir, tuple(args.codes))))


if __name__ == "__main__":
    main()
