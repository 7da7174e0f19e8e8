"""Random weights for tiny checkpoints that make comparisons meaningful (``engine/offline/tiny.py``)."""

from __future__ import annotations

import torch


def spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Give the random model decisive logits, varied norms and a VQ encoder with varied codes.

    transformers' initialisation (std 0.02, zero biases, unit norms) gives near-uniform
    logits, where greedy ties make token-for-token comparisons meaningless, and
    unit qk-norm scales and zero shifts, where a per-head norm applied to the wrong
    heads (or in the wrong place, as with swin-norm) would go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(spread(name, p.shape, gen))


def spread(name: str, shape: torch.Size | tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One random tensor: norm scales around 1 and shifts around 0, matrices scaled by 1/sqrt(fan_in)."""
    if "norm" in name:
        if name.endswith("weight"):
            return 0.5 + torch.rand(shape, generator=gen)
        return 0.3 * torch.randn(shape, generator=gen)
    fan_in = torch.Size(shape)[1:].numel() if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / fan_in**0.5
