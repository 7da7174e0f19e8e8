"""The guidance oracle: transformers' Chameleon, two forwards per image code (``bench.hf_baseline``,
which also times it as the research code's way), loaded from a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.hf_baseline import guided_image
from engine.shared.vocab import TokenLayout


def guided_image_reference(model_dir: Path, prompt: list[int], uncond: list[int], scale: float) -> list[int]:
    """BOI, the image's codes, EOI: the tokens an image-only guided greedy request writes."""
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return guided_image(model, TokenLayout.from_checkpoint(model_dir), prompt, uncond, scale)
