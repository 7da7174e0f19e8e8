"""What a checkpoint family is: the base class holds Meta's Chameleon behaviour, and a family module
overrides what its authors do differently. Everything outside ``engine/shared/families/`` asks a family
(found through the registry in ``__init__.py``) instead of testing for one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from engine.shared.image_sizes import ListedSizes, RoundedSizes, size_name
from engine.shared.processor_settings import processor_settings
from engine.shared.span_format import SpanFormat

if TYPE_CHECKING:
    import torch

CHAMELEON_ARCHITECTURE = "ChameleonForConditionalGeneration"
CHAMELEON_MODEL_CLASS = "engine.worker.model:ChameleonForConditionalGeneration"
BOI_NAME = "<racm3:break>"
EOI_NAME = "<eoss>"
IMAGE_PLACEHOLDER_NAME = "<image>"
SEP_NAME = "<reserved08706>"
# Chameleon names codebook index i ``IMGIMG`` + the decimal digits of i written as letters (0->A ... 9->J) + ``Z``.
_CODE_PREFIX, _CODE_SUFFIX = "IMGIMG", "Z"
_DIGIT_LETTERS = "ABCDEFGHIJ"


def code_name(index: int) -> str:
    """Chameleon's vocabulary name of codebook entry ``index``."""
    return _CODE_PREFIX + "".join(_DIGIT_LETTERS[int(d)] for d in str(index)) + _CODE_SUFFIX


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
    negative_prompt: str | None = None  # guidance's unconditional text where the request gives none
    image_prompt_suffix: str = ""  # appended to the last user text of an image-only reply
    # Speculative Jacobi decoding's window (engine/worker/jacobi.py): image positions one step verifies, as
    # the SJD authors run Lumina-mGPT and Emu3 (L = 16); 1 = off.
    jacobi_window: int = 16


class Family:
    """One family of checkpoints. Instances are singletons, compared by identity."""

    name = "chameleon"
    title = "Chameleon"
    architectures: tuple[str, ...] = (CHAMELEON_ARCHITECTURE,)  # config.json names this family owns
    model_class = CHAMELEON_MODEL_CLASS  # the vLLM model our plugin registers for them
    sampling = SamplingDefaults()
    qk_norm = True  # per-head q/k layer norms (Chameleon's); without them the text model is Llama
    # The VQ model: Meta's VQGAN ("vqgan"), or transformers' Emu3VQVAE ("emu3"); the front end and the tiny
    # writer (transformers' Chameleon or Emu3 model classes) follow it.
    codec = "vqgan"
    plain_image_prompt = False  # image-only replies prompted as BOS + the text, without the chat format
    processor_config_required = True  # False: without one, images get Meta's image-tokenizer preprocessing
    # vocabulary names of the span's ends, the image placeholder of chat templates, and the end of a turn
    span_names = MappingProxyType({"boi": BOI_NAME, "eoi": EOI_NAME, "image_placeholder": IMAGE_PLACEHOLDER_NAME,
                                   "sep": SEP_NAME})

    def __repr__(self) -> str:
        return f"<family {self.name}: {self.sampling}>"

    def recognizes(self, given: Path, architectures: list[str]) -> bool:
        """Whether the checkpoint given as ``given`` (the path the user passed) with these ``config.json``
        architectures is of this family."""
        return any(name in self.architectures for name in architectures)

    def code_name(self, index: int) -> str:
        """The vocabulary name of codebook entry ``index``."""
        return code_name(index)

    def image_codes(self, vocabulary_map: dict[str, int]) -> dict[int, int]:
        """Codebook index -> vocabulary id, for every code the vocabulary names."""
        codes = {}
        for name, tid in vocabulary_map.items():
            if name.startswith(_CODE_PREFIX) and name.endswith(_CODE_SUFFIX):
                digits = name[len(_CODE_PREFIX):-len(_CODE_SUFFIX)]
                if digits and all(c in _DIGIT_LETTERS for c in digits):
                    codes[int("".join(str(_DIGIT_LETTERS.index(c)) for c in digits))] = tid
        return codes

    def vocab_size(self, config: dict) -> int:
        """The model's vocabulary size, from ``config.json`` (ValueError where it has none)."""
        return int(config["vocab_size"])

    def native_seq_length(self, config: dict, model_dir: Path) -> int:
        """Codes of the default image: the processor's ``image_seq_length``, else the square of the VQGAN's
        resolution over its downsampling."""
        seq_len = processor_settings(model_dir).get("image_seq_length")
        if seq_len is None:
            vq = config.get("vq_config") or {}
            grid = vq.get("resolution", 512) // 2 ** (len(vq.get("channel_multiplier", [1, 1, 2, 2, 4])) - 1)
            seq_len = grid * grid
        return int(seq_len)

    def span_format(self, vocabulary_map: dict[str, int], native_grid: int,
                    model_dir: Path | None = None) -> SpanFormat:
        """How this family writes one image as tokens (ValueError for a vocabulary that lacks its tokens);
        ``model_dir``, where given, holds the checkpoint's tokenizer."""
        return SpanFormat(native_grid)

    def image_sizes(self, span: SpanFormat, pixels_per_code: int, model_dir: str) -> ListedSizes | RoundedSizes:
        """The sizes a checkpoint writes: Chameleon's one native square."""
        grid = (span.native_grid, span.native_grid)
        return ListedSizes(MappingProxyType({size_name(grid, pixels_per_code): grid}))

    def weight_name(self, name: str) -> str | None:
        """Our model's name for the checkpoint's weight ``name``; None for weights it does not hold (the VQ
        model's)."""
        return None if name.startswith("model.vqmodel.") else name

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
