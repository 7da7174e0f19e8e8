"""Classifier-free guidance the straightforward way, as the research code does it: two transformers
forwards per image code (conditional and unconditional, each with its own cache), raw logits combined
as ``uncond + scale * (cond - uncond)``, greedy over the image codes."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.vocab import TokenLayout


@torch.inference_mode()
def guided_image_reference(model_dir: Path, prompt: list[int], uncond: list[int], scale: float) -> list[int]:
    """BOI, the image's codes, EOI: the tokens an image-only guided request writes."""
    from transformers import ChameleonForConditionalGeneration

    layout = TokenLayout.from_checkpoint(model_dir)
    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
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
