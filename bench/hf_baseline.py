"""The research repos' way to write images: transformers ``generate``, one request at a time.

As in Anole's and Lumina-mGPT's inference scripts: the model's own ``generate`` with the
image-span rules as a Python ``LogitsProcessor`` (BOI, then exactly ``image_seq_length``
codes, then EOI), Anole's image sampling (temperature 0.7, top-p 0.9), and a VQGAN decode
+ PNG of each image. transformers' Chameleon masks every image code in ``forward`` (it
only reads images); those forks lift that mask, and so does :func:`load_model`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, ChameleonForConditionalGeneration, LogitsProcessor

from engine.frontend.images import to_png
from engine.frontend.vqgan import load_meta_vqgan
from engine.shared.vocab import TokenLayout


class ImageOnlySpan(LogitsProcessor):
    """Allow BOI at the first step, only image codes for the next ``image_seq_length``, then only EOI."""

    def __init__(self, layout: TokenLayout, prompt_len: int, vocab_size: int) -> None:
        self.prompt_len, self.codes = prompt_len, layout.image_seq_length

        def only(ids: torch.Tensor) -> torch.Tensor:
            bias = torch.full((vocab_size,), -torch.inf)
            bias[ids] = 0.0
            return bias

        self.boi, self.code, self.eoi = (only(torch.tensor([layout.boi])), only(layout.code_ids()),
                                         only(torch.tensor([layout.eoi])))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        bias = self.boi if step == 0 else self.code if step <= self.codes else self.eoi
        return scores + bias


def load_model(model_dir: Path) -> ChameleonForConditionalGeneration:
    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.model.vocabulary_mapping.__dict__["image_tokens"] = []  # lift the read-only mask (a cached_property)
    return model


def images_per_s(model_dir: str | Path, count: int = 2, threads: int = 1, prompt: str = "Draw picture {i}.") -> dict:
    """Images/s over ``count`` prompts, one after another, after a short warm-up.

    One torch thread by default, like vLLM's CPU worker (one core, the other left to the front end); on
    a shared 2-core box two threads were 6x slower per token (OpenMP threads spinning against load).
    """
    model_dir = Path(model_dir)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _images_per_s(model_dir, count, prompt) | {"torch_threads": threads}
    finally:
        torch.set_num_threads(saved_threads)


def _images_per_s(model_dir: Path, count: int, prompt: str) -> dict:
    layout = TokenLayout.from_checkpoint(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir)
    vqgan = load_meta_vqgan(model_dir / "vqgan.ckpt")
    grid = vqgan.config.grid

    def one(i: int, new_tokens: int = layout.image_seq_length + 2) -> torch.Tensor:
        ids = [tokenizer.bos_token_id, *tokenizer.encode(prompt.format(i=i), add_special_tokens=False), layout.sep]
        prompt_ids = torch.tensor([ids])
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                                 temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=new_tokens,
                                 logits_processor=[ImageOnlySpan(layout, len(ids), model.config.vocab_size)],
                                 eos_token_id=layout.eoi, pad_token_id=tokenizer.pad_token_id)
        return out[0, len(ids) :]

    def png(span: torch.Tensor) -> bytes:
        codes = layout.ids_to_codes(span[1:-1])
        if span[0] != layout.boi or span[-1] != layout.eoi or len(codes) != grid * grid or (codes < 0).any():
            raise RuntimeError("the transformers loop broke the image span")
        return to_png(vqgan.decode(codes.view(1, grid, grid))[0])

    one(-1, 8)  # warm-up: a few steps and one decode
    vqgan.decode(torch.zeros(1, grid, grid, dtype=torch.long))
    start = time.perf_counter()
    for i in range(count):
        png(one(i))
    elapsed = time.perf_counter() - start
    return {"images": count, "seconds": round(elapsed, 2), "images_per_s": round(count / elapsed, 4),
            "tokens_per_image": layout.image_seq_length + 2}


@torch.inference_mode()
def guided_image(model: ChameleonForConditionalGeneration, layout: TokenLayout, prompt: list[int],
                 uncond: list[int], scale: float) -> list[int]:
    """Classifier-free guidance as the research code does it: two forwards per image code (conditional
    and unconditional, each with its own cache), raw logits combined as ``uncond + scale * (cond -
    uncond)``, greedy over the codes. Returns BOI, the codes, EOI."""
    codes = torch.tensor(layout.code_to_id)
    caches: list = [None, None]

    def step(row: int, ids: list[int]) -> torch.Tensor:  # the lm head on the last state: no image-code masking
        out = model.model(input_ids=torch.tensor([ids]), past_key_values=caches[row], use_cache=True)
        caches[row] = out.past_key_values
        return model.lm_head(out.last_hidden_state[0, -1])

    cond, free = step(0, [*prompt, layout.boi]), step(1, [*uncond, layout.boi])
    written = [layout.boi]
    for _ in range(layout.image_seq_length):
        guided = free + scale * (cond - free)
        code = int(codes[guided[codes].argmax()])
        written.append(code)
        cond, free = step(0, [code]), step(1, [code])
    return [*written, layout.eoi]


def guided_images_per_s(model_dir: str | Path, scale: float, count: int = 2, threads: int = 1) -> dict:
    """Images/s of :func:`guided_image` + VQGAN decode + PNG over ``count`` prompts, one at a time."""
    model_dir = Path(model_dir)
    layout, tokenizer = TokenLayout.from_checkpoint(model_dir), AutoTokenizer.from_pretrained(model_dir)
    model, vqgan = load_model(model_dir), load_meta_vqgan(model_dir / "vqgan.ckpt")
    grid, saved_threads = vqgan.config.grid, torch.get_num_threads()
    uncond = [tokenizer.bos_token_id, layout.sep]
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for i in range(count):
            prompt = [tokenizer.bos_token_id, *tokenizer.encode(f"Draw picture {i}.", add_special_tokens=False),
                      layout.sep]
            span = torch.tensor(guided_image(model, layout, prompt, uncond, scale))
            to_png(vqgan.decode(layout.ids_to_codes(span[1:-1]).view(1, grid, grid))[0])
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved_threads)
    return {"images": count, "seconds": round(elapsed, 2), "images_per_s": round(count / elapsed, 4),
            "cfg_scale": scale, "torch_threads": threads}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(images_per_s(sys.argv[1], *(int(a) for a in sys.argv[2:4]))))
