"""Emu3's images the way its authors and transformers' documentation write them: ``generate`` one request at a
time, the image layout as a ``prefix_allowed_tokens_fn`` (BAAI's ``Emu3PrefixConstrainedLogitsHelper`` rule),
their sampling (top-k 2048) and, with a scale other than 1, transformers' unbatched classifier-free guidance
from their negative prompt; then ``decode_image_tokens``, the processor's ``postprocess`` and a PNG."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.shared.families.emu3 import NEGATIVE_PROMPT, POSITIVE_PROMPT, default_area, generate_grid, image_processor


def layout_rule(model, prompt_len: int, rows: int, cols: int) -> Callable[[int, torch.Tensor], list[int]]:
    """The tokens allowed after ``prompt_len`` prompt tokens (the prompt ends with the image prefix): ``cols``
    codes and ``<|extra_200|>`` per row, then ``<|extra_201|>``, ``<|image end|>``, the end-of-sequence token."""
    vocab = model.config.vocabulary_map
    codes = [tid for name, tid in vocab.items() if name.startswith("<|visual token")]
    tail = [vocab["<|extra_201|>"], vocab["<|image end|>"], model.config.text_config.eos_token_id]
    body = rows * (cols + 1)

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
        offset = ids.shape[0] - prompt_len + 1
        if offset <= body:
            return [vocab["<|extra_200|>"]] if offset % (cols + 1) == 0 else codes
        return [tail[min(offset - body - 1, 2)]]

    return allowed


def images_per_s(model_dir: str | Path, count: int = 2, cfg_scale: float = 3.0, threads: int = 1) -> dict:
    """Images/s over ``count`` prompts, one after another, after a short warm-up; one torch thread by default,
    like vLLM's CPU worker (bench/hf_baseline.py says why)."""
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    model_dir = Path(model_dir)
    model = Emu3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = Emu3Processor.from_pretrained(model_dir)
    area = default_area(image_processor(model_dir))
    rows, cols = generate_grid("1:1", area, 8)
    negative = processor(text=[NEGATIVE_PROMPT], return_for_image_generation=True, image_area=area,
                         return_tensors="pt")

    def one(i: int, new_tokens: int = rows * (cols + 1) + 3) -> bytes:
        inputs = processor(text=[f"Draw picture {i}.{POSITIVE_PROMPT}"], return_for_image_generation=True,
                           image_area=area, return_tensors="pt")
        prompt_len = inputs.input_ids.shape[1]
        guidance = {"guidance_scale": cfg_scale, "negative_prompt_ids": negative.input_ids,
                    "negative_prompt_attention_mask": negative.attention_mask} if cfg_scale != 1.0 else {}
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, do_sample=True, top_k=2048,
                                 max_new_tokens=new_tokens, prefix_allowed_tokens_fn=layout_rule(model, prompt_len,
                                                                                                 rows, cols),
                                 **guidance)
            if new_tokens < rows * (cols + 1) + 3:
                return b""
            pixels = model.decode_image_tokens(image_tokens=out[:, prompt_len:], height=rows, width=cols)
        picture = processor.postprocess(list(pixels.float()), return_tensors="PIL.Image.Image")["pixel_values"][0]
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        return buf.getvalue()

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one(-1, 8)  # warm-up: a few steps
        start = time.perf_counter()
        for i in range(count):
            one(i)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved_threads)
    return {"images": count, "seconds": round(elapsed, 2), "images_per_s": round(count / elapsed, 4),
            "grid": [rows, cols], "cfg_scale": cfg_scale, "torch_threads": threads}
