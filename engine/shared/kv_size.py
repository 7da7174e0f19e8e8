"""What keys and values cost per token across tensor-parallel ranks: the heads one rank holds (the worker sizes
the twins' caches by it) and the bytes of all ranks together (the front end caps guidance memory by it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: device checks run where transformers is absent (bench/gpu_check.py)
    import torch
    from transformers import PretrainedConfig


def kv_heads_per_rank(total_kv_heads: int, tp_size: int) -> int:
    """KV heads one tensor-parallel rank holds: a share, or one replicated head when ranks outnumber them."""
    return max(1, total_kv_heads // tp_size)


def kv_bytes_per_token(config: PretrainedConfig, tp_size: int, dtype: torch.dtype) -> int:
    """Keys and values of one token, all layers and all TP ranks together (replicated heads once per rank)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = kv_heads_per_rank(config.num_key_value_heads, tp_size) * tp_size
    return 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize
