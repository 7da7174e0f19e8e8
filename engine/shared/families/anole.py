"""Anole (GAIR's Chameleon fine-tuned to write images).

Its inference code is Meta's with its options (GAIR-NLP/anole@af563fa ``chameleon/inference/chameleon.py``):
temperature 0.7, top-p 0.9, with guidance of text scale 3.0 and image scale 1.2 over (full prompt,
image-only prompt, bare BOI). Without an image in the prompt that is one-scale guidance at 3.0, which is
what ``cfg_scale`` does here. Its files are Meta's release layout with nothing of its own, so it is
recognized by name: the checkpoint folder as given (e.g. ``Anole-7b-v0.1``), or its model card README.md
naming Anole.
"""

from __future__ import annotations

from pathlib import Path

from engine.shared.families.base import CHAMELEON_ARCHITECTURE, Family, SamplingDefaults


class Anole(Family):
    name = "anole"
    title = "Anole"
    architectures = ()  # none of its own: a Chameleon checkpoint known by its name
    sampling = SamplingDefaults(cfg_scale=3.0)

    def recognizes(self, given: Path, architectures: list[str]) -> bool:
        if CHAMELEON_ARCHITECTURE not in architectures:
            return False
        card = Path(given) / "README.md"
        return "anole" in Path(given).resolve().name.lower() or (
            card.is_file() and "anole" in card.read_text(errors="replace").lower())

    def save_tiny(self, model, tokenizer, dst: Path, resolution: int, grid: int) -> None:
        """Chameleon's layout with the model card that names it, as GAIR publishes Anole."""
        super().save_tiny(model, tokenizer, dst, resolution, grid)
        (dst / "README.md").write_text("# Anole\n\nA tiny test checkpoint in the layout of GAIR's Anole.\n")


ANOLE = Anole()
