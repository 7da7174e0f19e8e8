"""Meta's Chameleon: the base family, as ``base.Family`` defines it (Hugging Face layout, or Meta's release
converted on first use by ``engine/offline/meta_layout.py``)."""

from __future__ import annotations

from engine.shared.families.base import Family

CHAMELEON = Family()
