"""Checkpoint families: which one a checkpoint is, and the image sampling defaults its authors publish.

A request's own fields always win; these replace only the server's defaults.

- Chameleon: Meta's inference options (facebookresearch/chameleon ``chameleon/inference/chameleon.py``
  ``Options``): image codes at temperature 0.7, top-p 0.9.
- Anole (GAIR's Chameleon fine-tuned to write images): the same inference code and options
  (GAIR-NLP/anole@af563fa ``chameleon/inference/chameleon.py``): temperature 0.7, top-p 0.9, with
  guidance of text scale 3.0 and image scale 1.2 over (full prompt, image-only prompt, bare BOI). Without
  an image in the prompt that is one-scale guidance at 3.0, which is what ``cfg_scale`` does here.
  Recognized by name (the checkpoint folder as given, e.g. ``Anole-7b-v0.1``, or its model card README.md
  naming Anole), as its files are Meta's release layout with nothing of its own.
- Lumina-mGPT (``ChameleonXLLMXForConditionalGeneration`` in config.json): Alpha-VLLM/Lumina-mGPT@104abe4
  ``inference_solver.py`` ``create_logits_processor(cfg=3.0, image_top_k=2000, text_top_k=10)`` with the
  one ``temperature`` 1.0 of its README examples (which raise cfg to 4.0) and no top-p.

Guidance needs vLLM's V1 model runner (``engine/worker/guidance.py``); where it is off, the cfg default is not applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.plugin import LUMINA_ARCHITECTURE


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    image_temperature: float = 0.7
    image_top_k: int = 0  # 0 = off
    image_top_p: float = 0.9
    cfg_scale: float = 1.0  # 1 = no guidance
    text_top_k: int | None = None  # None: the request's (vLLM's) default

    def image_defaults(self) -> dict[str, float | int]:
        return {"image_temperature": self.image_temperature, "image_top_k": self.image_top_k,
                "image_top_p": self.image_top_p}


CHAMELEON = Family("chameleon")
ANOLE = Family("anole", cfg_scale=3.0)
LUMINA = Family("lumina-mgpt", image_temperature=1.0, image_top_k=2000, image_top_p=1.0, cfg_scale=3.0,
                text_top_k=10)


def recognize(given: str | Path, model_dir: str | Path) -> Family:
    """The family of the checkpoint given as ``given`` and served from ``model_dir`` (its Hugging Face
    layout, a conversion for Meta's); Chameleon when nothing says otherwise (the preflight judges the rest)."""
    try:
        architectures = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    if LUMINA_ARCHITECTURE in architectures:
        return LUMINA
    card = Path(given) / "README.md"
    if "anole" in Path(given).resolve().name.lower() or (card.is_file() and "anole" in card.read_text(
            errors="replace").lower()):
        return ANOLE
    return CHAMELEON
