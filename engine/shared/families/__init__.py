"""The checkpoint families this server serves, and which one a checkpoint is.

A family is one module here (``chameleon.py``, ``anole.py``, ``lumina.py``, ``emu3.py``) overriding
``base.Family``; adding one means writing its module and its line in ``FAMILIES``.
"""

from __future__ import annotations

from pathlib import Path

from engine.shared.families.anole import ANOLE
from engine.shared.families.base import Family, SamplingDefaults, config_architectures
from engine.shared.families.chameleon import CHAMELEON
from engine.shared.families.emu3 import EMU3
from engine.shared.families.lumina import LUMINA

# The first family that recognizes a checkpoint is its family; Chameleon, the base, comes last.
FAMILIES: tuple[Family, ...] = (EMU3, LUMINA, ANOLE, CHAMELEON)

__all__ = ["ANOLE", "CHAMELEON", "EMU3", "FAMILIES", "LUMINA", "Family", "SamplingDefaults", "by_name",
           "for_architectures", "recognize", "served_architectures"]


def recognize(given: str | Path, model_dir: str | Path) -> Family:
    """The family of the checkpoint given as ``given`` and served from ``model_dir`` (its Hugging Face
    layout, a conversion for Meta's); Chameleon when nothing says otherwise (the preflight judges the rest)."""
    architectures = config_architectures(model_dir)
    return next((f for f in FAMILIES if f.recognizes(Path(given), architectures)), CHAMELEON)


def for_architectures(architectures: list[str] | tuple[str, ...]) -> Family:
    """The family that owns one of these ``config.json`` architectures (what the engine sees of a checkpoint:
    a family known only by its name shares its base's behaviour in the engine)."""
    return next((f for f in FAMILIES if any(a in f.architectures for a in architectures)), CHAMELEON)


def by_name(name: str) -> Family:
    """The family called ``name`` (``Family.name``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown family {name!r}: one of {', '.join(f.name for f in FAMILIES)}")


def served_architectures() -> dict[str, str]:
    """Every architecture name served, with the family that owns it (for messages)."""
    return {name: family.title for family in reversed(FAMILIES) for name in family.architectures}
