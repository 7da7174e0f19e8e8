"""What vLLM builds inside a worker and gives no handle on, for the code that runs beside it there: our
model (guidance twins run its layers; Model Runner V2's span processor reads its raw logits) and the
guidance of that processor (the model state drops twins when requests leave the batch). Weak references:
the worker owns these objects. No imports of ours, so that any worker-side module may use it."""

from __future__ import annotations

import weakref
from typing import Any

_model: weakref.ref | None = None
_v2_guidance: weakref.ref | None = None


def register_model(model: Any) -> None:
    global _model
    _model = weakref.ref(model)


def live_model() -> Any:
    """This worker's ``ChameleonForConditionalGeneration``."""
    model = _model() if _model is not None else None
    if model is None:
        raise RuntimeError("no chameleon-serve model in this process")
    return model


def register_v2_guidance(guidance: Any) -> None:
    global _v2_guidance
    _v2_guidance = weakref.ref(guidance)


def live_v2_guidance() -> Any | None:
    """The ``Guidance`` of this worker's Model Runner V2 span processor, if one was built."""
    return _v2_guidance() if _v2_guidance is not None else None
