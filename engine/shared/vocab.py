"""Token layout of a checkpoint, derived from its files, never typed in: which ids open, close and fill an
image span. Names and config fields come from the checkpoint's family (``engine/shared/families/``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.shared.families import for_architectures
from engine.shared.families.base import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name
from engine.shared.span_format import SpanFormat

__all__ = ["BOI_NAME", "EOI_NAME", "IMAGE_PLACEHOLDER_NAME", "SEP_NAME", "CheckpointError", "TokenLayout", "code_name"]


class CheckpointError(ValueError):
    """A checkpoint lacks something the server needs; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class TokenLayout:
    """Special ids and the codebook <-> vocabulary tables of one checkpoint."""

    boi: int
    eoi: int
    image_placeholder: int
    sep: int
    vocab_size: int
    image_seq_length: int
    code_to_id: tuple[int, ...]  # vocabulary id of codebook index i
    span: SpanFormat = field(default=SpanFormat(0), compare=False)  # the family's span grammar (Chameleon's)
    code_of: Mapping[int, int] = field(init=False, repr=False, compare=False)  # vocabulary id -> codebook index
    _span_ids: frozenset[int] = field(init=False, repr=False, compare=False)  # BOI, EOI, codes, EOL, sizes

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_of", {tid: i for i, tid in enumerate(self.code_to_id)})
        if self.span.native_grid == 0:  # Chameleon's square span of image_seq_length codes
            object.__setattr__(self, "span", SpanFormat(round(self.image_seq_length ** 0.5)))
        object.__setattr__(self, "_span_ids",
                           frozenset(self.code_to_id) | {self.boi, self.eoi} | frozenset(self.span.inner_ids()))

    @classmethod
    def from_vocabulary_map(
        cls, vocabulary_map: dict[str, int], vocab_size: int, image_seq_length: int,
        architectures: list[str] | None = None, model_dir: Path | None = None,
    ) -> TokenLayout:
        """The layout of a vocabulary; ``model_dir`` (where given) holds the tokenizer its family may read."""
        family = for_architectures(architectures or [])
        names = family.span_names
        missing = [n for n in names.values() if n not in vocabulary_map]
        if missing:
            raise CheckpointError(f"vocabulary_map lacks {missing}")
        codes = family.image_codes(vocabulary_map)
        if sorted(codes) != list(range(len(codes))) or not codes:
            raise CheckpointError(f"vocabulary_map image codes {family.code_name(0)}... are not a contiguous "
                                  "0..N-1 codebook")
        try:
            span = family.span_format(vocabulary_map, round(image_seq_length ** 0.5), model_dir)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        return cls(
            boi=vocabulary_map[names["boi"]],
            eoi=vocabulary_map[names["eoi"]],
            image_placeholder=vocabulary_map[names["image_placeholder"]],
            sep=vocabulary_map[names["sep"]],
            vocab_size=vocab_size,
            image_seq_length=image_seq_length,
            code_to_id=tuple(codes[i] for i in range(len(codes))),
            span=span,
        )

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path) -> TokenLayout:
        """Read ``config.json`` (vocabulary_map) and, as the checkpoint's family says, the image grid."""
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        config = json.loads(config_path.read_text())
        if not config.get("vocabulary_map"):
            raise CheckpointError(f"{config_path} has no vocabulary_map: convert the checkpoint to the Hugging Face "
                                  "layout")
        family = for_architectures(config.get("architectures") or [])
        try:
            vocab_size, seq_length = family.vocab_size(config), family.native_seq_length(config, model_dir)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{config_path}: {e}") from None
        return cls.from_vocabulary_map(config["vocabulary_map"], vocab_size, seq_length, config.get("architectures"),
                                       model_dir)

    @property
    def codebook_size(self) -> int:
        return len(self.code_to_id)

    def code_ids(self) -> torch.Tensor:
        """Vocabulary ids of all image codes, in codebook order (int64)."""
        return torch.tensor(self.code_to_id, dtype=torch.long)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Map codebook indices (any shape) to vocabulary ids."""
        return self.code_ids().to(codes.device)[codes.long()]

    def code_index_table(self) -> torch.Tensor:
        """Per vocabulary id, its codebook index; -1 for ids that are not image codes (int64, CPU)."""
        table = torch.full((self.vocab_size,), -1, dtype=torch.long)
        table[self.code_ids()] = torch.arange(self.codebook_size)
        return table

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Map vocabulary ids of image codes back to codebook indices; other ids map to -1."""
        return self.code_index_table().to(ids.device)[ids.long()]

    def image_span(self, codes: torch.Tensor) -> list[int]:
        """BOI + one image's codes ([rows, cols] codebook indices) as its family writes them + EOI."""
        ids = self.codes_to_ids(codes)
        if not self.span.rows_framed:
            return [self.boi, *ids.flatten().tolist(), self.eoi]
        rows, cols = ids.shape[-2:]
        body = torch.cat([ids.reshape(rows, cols), torch.full((rows, 1), self.span.eol, dtype=ids.dtype)], dim=1)
        return [self.boi, *self.span.prefix((rows, cols)), *body.flatten().tolist(), *self.span.trailer, self.eoi]

    def span_mask(self, token_ids: list[int], open_span: bool = False) -> list[bool]:
        """Per token: whether it belongs to an image (BOI to EOI), reading in order from inside a span when
        ``open_span``; a size prefix written as text (Emu3's) is an image's by its place, not its id."""
        mask, inside = [], open_span
        for tid in token_ids:
            if tid == self.boi:
                inside = True
            mask.append(inside or tid in self._span_ids)
            if tid == self.eoi:
                inside = False
        return mask

    def is_span_token(self, tid: int) -> bool:
        """BOI, EOI, an image code or a span's framing token: a token that belongs to an image, not to text."""
        return tid in self._span_ids

    def span_token_ids(self) -> frozenset[int]:
        """Every id :meth:`is_span_token` accepts."""
        return self._span_ids
