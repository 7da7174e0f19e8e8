"""How a guided request and its unconditional companions are marked in ``SamplingParams.extra_args``: the
scheduler (``engine/core/guided_pairs.py``) writes the marks, the worker's guidance
(``engine/worker/guidance.py``) pairs batch rows by them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAIR_KEY = "cfg_pair"  # the same value on a guided request and each of its companions
COMPANION_KEY = "cfg_companion"  # present (true) on companions only


def pair_mark(extra_args: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """(the pair's key or None, whether this is the companion) of a request's extra_args."""
    xa = extra_args or {}
    return xa.get(PAIR_KEY), bool(xa.get(COMPANION_KEY, False))

# ``SchedulerConfig.scheduler_cls`` for every engine that serves guidance (a path: the front end does not import
# vLLM's scheduler)
SCHEDULER = "engine.core.guided_pairs.guided_scheduler"
