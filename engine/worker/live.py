"""What vLLM builds inside a worker and gives no handle on, for the code that runs beside it there: our
model, whose raw logits Model Runner V2's span processor reads. A weak reference: the worker owns the model.
No imports of ours, so that any worker-side module may use it."""

from __future__ import annotations

import weakref
from typing import Any

_model: weakref.ref | None = None


def register_model(model: Any) -> None:
    global _model
    _model = weakref.ref(model)


def live_model() -> Any:
    """This worker's ``ChameleonForConditionalGeneration``."""
    model = _model() if _model is not None else None
    if model is None:
        raise RuntimeError("no chameleon-serve model in this process")
    return model
