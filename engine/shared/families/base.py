"""What a checkpoint family is: the base class holds Meta's Chameleon behaviour, and a family module
overrides what its authors do differently. Everything outside ``engine/shared/families/`` asks a family
(found through the registry in ``__init__.py``) instead of testing for one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.shared.span_format import SpanFormat

if TYPE_CHECKING:
    import torch

CHAMELEON_ARCHITECTURE = "ChameleonForConditionalGeneration"
CHAMELEON_MODEL_CLASS = "engine.worker.model:ChameleonForConditionalGeneration"


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """The sampling settings a family's authors publish. A request's own fields always win; these replace
    only the server's defaults. The values here are Meta's inference options (facebookresearch/chameleon
    ``chameleon/inference/chameleon.py`` ``Options``): image codes at temperature 0.7, top-p 0.9, no top-k."""

    image_temperature: float = 0.7
    image_top_k: int = 0  # 0 = off
    image_top_p: float = 0.9
    cfg_scale: float = 1.0  # 1 = no guidance
    text_top_k: int | None = None  # None: the request's (vLLM's) default


class Family:
    """One family of checkpoints. Instances are singletons, compared by identity."""

    name = "chameleon"
    title = "Chameleon"
    architectures: tuple[str, ...] = (CHAMELEON_ARCHITECTURE,)  # config.json names this family owns
    model_class = CHAMELEON_MODEL_CLASS  # the vLLM model our plugin registers for them
    sampling = SamplingDefaults()
    processor_config_required = True  # False: without one, images get Meta's image-tokenizer preprocessing

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.sampling}>"

    def recognizes(self, given: Path, architectures: list[str]) -> bool:
        """Whether the checkpoint given as ``given`` (the path the user passed) with these ``config.json``
        architectures is of this family."""
        return any(name in self.architectures for name in architectures)

    def span_format(self, vocabulary_map: dict[str, int], native_grid: int) -> SpanFormat:
        """How this family writes one image as tokens (ValueError for a vocabulary that lacks its tokens)."""
        return SpanFormat(native_grid)

    def image_sizes(self, span: SpanFormat, pixels_per_code: int, model_dir: str) -> dict[str, tuple[int, int]]:
        """The sizes a checkpoint writes, ``"WxH"`` (pixels) -> (rows, cols) code grid, the default first."""
        side = span.native_grid * pixels_per_code
        return {f"{side}x{side}": (span.native_grid, span.native_grid)}

    def qk_norm_rows(self, loaded: torch.Tensor, heads: int) -> torch.Tensor:
        """A checkpoint's q/k-norm weight or bias as one row per head (transformers' layout)."""
        if loaded.shape[0] != heads:
            raise ValueError(f"q/k norm of {loaded.shape[0]} rows for {heads} heads")
        return loaded

    def tiny_special_tokens(self, grid: int) -> list[str]:
        """Tokens of this family beyond Chameleon's, for a tiny checkpoint of ``grid`` codes a side."""
        return []

    def save_tiny(self, model, tokenizer, dst: Path, resolution: int, grid: int) -> None:
        """Write a tiny ``model`` (transformers' Chameleon) and ``tokenizer`` as this family's authors publish
        checkpoints: transformers' Hugging Face layout with its processor config, for Chameleon."""
        from transformers import ChameleonProcessor
        from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

        model.save_pretrained(dst)
        image_processor = ChameleonImageProcessorPil(size={"shortest_edge": resolution},
                                                     crop_size={"height": resolution, "width": resolution})
        ChameleonProcessor(image_processor, tokenizer, image_seq_length=grid * grid).save_pretrained(dst)


def config_architectures(model_dir: str | Path) -> list[str]:
    """``architectures`` of ``model_dir/config.json``; empty where it cannot be read (the preflight says why)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return []
