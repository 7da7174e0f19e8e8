"""The shape of a tiny checkpoint, shared by the writers of every family (``engine/offline/tiny.py``,
``engine/offline/tiny_emu3.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.shared.families import FAMILIES, by_name


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of a tiny checkpoint; ``grid`` x ``grid`` codes per image."""

    grid: int = 32
    codebook_size: int = 8192
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 352
    bpe_merges: int = 400
    swin_norm: bool = False
    dtype: str = "float32"
    seed: int = 0
    max_position_embeddings: int = 4096
    family: str = "chameleon"  # a Family.name (engine/shared/families/)
    # Every token embeds to one vector, so every position's next-token distribution is one fixed p: speculative
    # Jacobi decoding then accepts almost every draft, and sampled code counts can be tested against p.
    input_independent: bool = False

    def __post_init__(self) -> None:
        if self.family not in [f.name for f in FAMILIES]:
            raise ValueError(f"family must be one of {', '.join(f.name for f in FAMILIES)}, got {self.family!r}")
        if self.input_independent and by_name(self.family).codec != "vqgan":
            raise ValueError("input_independent is written by the Chameleon writer only (engine/offline/tiny.py)")
        if self.hidden_size // self.num_heads < 32:
            raise ValueError("head_dim must be >= 32 (vLLM's CPU attention rejects smaller heads)")
        if self.grid < 2 or self.codebook_size < 2:
            raise ValueError("grid and codebook_size must be >= 2")

    @property
    def resolution(self) -> int:
        """Image side in pixels of the Chameleon writer's VQGAN, which downsamples by 2 (one down level)."""
        return 2 * self.grid
