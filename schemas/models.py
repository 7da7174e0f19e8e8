"""`GET /v1/models` wire format."""

from __future__ import annotations

from typing import Literal

from schemas.common import WireModel


class ModelCard(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chameleon-serve"
    # --- extensions ---
    max_model_len: int


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
