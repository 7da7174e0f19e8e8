"""Keys and values kept outside vLLM's paged cache: the unconditional twins of guided requests
(``engine/worker/guidance.py``) and their batched forward's layout; what they cost per token is
``engine/shared/kv_size.py``'s."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.worker.transfers import to_device


class PrivateKV:
    """Keys and values of one sequence kept outside vLLM's paged cache, preallocated for ``capacity``
    tokens: the unconditional sequence of a guided request (``engine/worker/guidance.py``), which vLLM's
    scheduler never sees. Written in place, so a long image costs no re-copying."""

    def __init__(self, num_layers: int, capacity: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_layers, capacity, num_kv_heads, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # tokens written for every layer

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class PrivateBatch:
    """New tokens of several ``PrivateKV`` sequences run in one forward, packed one sequence after another
    (``steps[i]`` tokens for ``caches[i]``): a guided step's twins, each a code behind, or catching up."""

    def __init__(self, caches: Sequence[PrivateKV], steps: Sequence[int], device: torch.device) -> None:
        self.caches, self.steps = list(caches), list(steps)
        self.starts = [c.length for c in self.caches]
        self.device = device
        padded = max(self.steps)
        # Index tensors built on the host (every length is known there) and copied without a wait: a mask
        # built on the device would need a device->host read to select with.
        # the real tokens' places in the flattened (seqs, padded steps) layout of the padded forward
        self.real = to_device(np.concatenate([i * padded + np.arange(n) for i, n in enumerate(self.steps)]), device)
        self.query_positions = to_device(np.array(self.starts)[:, None] + np.arange(padded), device)
        self.last_tokens = to_device(np.cumsum(self.steps) - 1, device)  # each sequence's last new token, packed

    def visible(self, padded_length: int) -> torch.Tensor:
        """(seqs, 1, padded steps, padded length): key j is seen by query s when j <= its position. Real
        queries never reach the padding; padded ones (dropped) see some zeros, which keeps them finite."""
        keys = torch.arange(padded_length, device=self.device)
        return (keys <= self.query_positions.unsqueeze(-1)).unsqueeze(1)

    def advance(self) -> None:
        for cache, n in zip(self.caches, self.steps, strict=True):
            cache.length += n
