"""Token layout of a Chameleon checkpoint, derived from its files, never typed in.

Image codebook index i lives in the vocabulary under the name ``IMGIMG`` + the
decimal digits of i written as letters (0->A ... 9->J) + ``Z``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.shared.families import for_architectures
from engine.shared.span_format import SpanFormat

BOI_NAME = "<racm3:break>"
EOI_NAME = "<eoss>"
IMAGE_PLACEHOLDER_NAME = "<image>"
SEP_NAME = "<reserved08706>"
_CODE_PREFIX, _CODE_SUFFIX = "IMGIMG", "Z"
_DIGIT_LETTERS = "ABCDEFGHIJ"


def code_name(index: int) -> str:
    """Vocabulary name of codebook entry ``index``."""
    return _CODE_PREFIX + "".join(_DIGIT_LETTERS[int(d)] for d in str(index)) + _CODE_SUFFIX


def code_index(name: str) -> int:
    """Codebook index named by an ``IMGIMG...Z`` token (inverse of :func:`code_name`)."""
    digits = name[len(_CODE_PREFIX) : -len(_CODE_SUFFIX)]
    return int("".join(str(_DIGIT_LETTERS.index(c)) for c in digits))


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
        architectures: list[str] | None = None,
    ) -> TokenLayout:
        names = (BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME)
        missing = [n for n in names if n not in vocabulary_map]
        if missing:
            raise CheckpointError(f"vocabulary_map lacks {missing}")
        codes = {
            code_index(name): tid
            for name, tid in vocabulary_map.items()
            if name.startswith(_CODE_PREFIX) and name.endswith(_CODE_SUFFIX)
        }
        if sorted(codes) != list(range(len(codes))) or not codes:
            raise CheckpointError("vocabulary_map image codes IMGIMG...Z are not a contiguous 0..N-1 codebook")
        try:
            span = for_architectures(architectures or []).span_format(vocabulary_map, round(image_seq_length ** 0.5))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        return cls(
            boi=vocabulary_map[BOI_NAME],
            eoi=vocabulary_map[EOI_NAME],
            image_placeholder=vocabulary_map[IMAGE_PLACEHOLDER_NAME],
            sep=vocabulary_map[SEP_NAME],
            vocab_size=vocab_size,
            image_seq_length=image_seq_length,
            code_to_id=tuple(codes[i] for i in range(len(codes))),
            span=span,
        )

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path) -> TokenLayout:
        """Read ``config.json`` (vocabulary_map) and ``processor_config.json`` (image_seq_length)."""
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        config = json.loads(config_path.read_text())
        if not config.get("vocabulary_map"):
            raise CheckpointError(f"{config_path} has no vocabulary_map: convert the checkpoint to the Hugging Face "
                                  "layout")
        proc_path = model_dir / "processor_config.json"
        seq_len = json.loads(proc_path.read_text()).get("image_seq_length") if proc_path.exists() else None
        if seq_len is None:
            vq = config.get("vq_config") or {}
            grid = vq.get("resolution", 512) // 2 ** (len(vq.get("channel_multiplier", [1, 1, 2, 2, 4])) - 1)
            seq_len = grid * grid
        return cls.from_vocabulary_map(config["vocabulary_map"], config["vocab_size"], int(seq_len),
                                       config.get("architectures"))

    @property
    def codebook_size(self) -> int:
        return len(self.code_to_id)

    def code_ids(self) -> torch.Tensor:
        """Vocabulary ids of all image codes, in codebook order (int64)."""
        return torch.tensor(self.code_to_id, dtype=torch.long)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Map codebook indices (any shape) to vocabulary ids."""
        return self.code_ids().to(codes.device)[codes.long()]

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Map vocabulary ids of image codes back to codebook indices; other ids map to -1."""
        table = torch.full((self.vocab_size,), -1, dtype=torch.long)
        table[self.code_ids()] = torch.arange(self.codebook_size)
        return table.to(ids.device)[ids.long()]

    def image_span(self, codes: torch.Tensor) -> list[int]:
        """BOI + one image's codes ([rows, cols] codebook indices) as its family writes them + EOI."""
        ids = self.codes_to_ids(codes)
        if not self.span.rows_framed:
            return [self.boi, *ids.flatten().tolist(), self.eoi]
        rows, cols = ids.shape[-2:]
        body = torch.cat([ids.reshape(rows, cols), torch.full((rows, 1), self.span.eol, dtype=ids.dtype)], dim=1)
        return [self.boi, *self.span.size_tokens((rows, cols)), *body.flatten().tolist(), self.eoi]

    def is_span_token(self, tid: int) -> bool:
        """BOI, EOI, an image code or a span's framing token: a token that belongs to an image, not to text."""
        return tid in self._span_ids

    def span_token_ids(self) -> frozenset[int]:
        """Every id :meth:`is_span_token` accepts."""
        return self._span_ids
