"""How tensor-parallel ranks share a model's key/value heads (the worker's attention layers are built by it)."""

from __future__ import annotations


def kv_heads_per_rank(total_kv_heads: int, tp_size: int) -> int:
    """KV heads one tensor-parallel rank holds: a share, or one replicated head when ranks outnumber them."""
    return max(1, total_kv_heads // tp_size)
