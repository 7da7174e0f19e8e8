"""How an engine turns on speculative Jacobi decoding of image spans (``engine/worker/jacobi.py``), shared by
the server, offline engines and the worker, with no torch or vLLM imports.

SJD rides on vLLM's speculative-decoding path: a ``custom_class`` proposer (ours) whose drafts vLLM schedules,
writes into the KV cache and rolls back when rejected. ``num_speculative_tokens`` is the largest window less
one; the draft tokens of one step, shared among the batch's image rows, are capped by the budget, which
travels to the workers in ``VllmConfig.additional_config``.
"""

from __future__ import annotations

from typing import Any

MAX_WINDOW = 16  # image positions one step may verify for one row (its window L): 15 drafts and the token after
PROPOSER = "engine.worker.jacobi_v1.JacobiProposer"
BUDGET_KEY = "image_jacobi_budget"  # in VllmConfig.additional_config
# Draft tokens per step for the batch's image rows, by device kind. On an H200 a Chameleon-7B step costs the
# same up to ~128 tokens (DESIGN.md, GPU facts): 96 drafts leave room for 32 rows' own tokens. A CPU's step
# grows with every token: one row's full window, so that a loaded batch decodes as without SJD.
DEFAULT_BUDGETS = {"cuda": 96, "cpu": MAX_WINDOW - 1}


def default_budget(device_kind: str) -> int:
    """The draft-token budget of a device kind (``"cuda"``, ``"cpu"``); unknown kinds get the CPU's."""
    return DEFAULT_BUDGETS.get(device_kind, DEFAULT_BUDGETS["cpu"])


def speculative_settings(budget: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(speculative_config, additional_config)`` entries of vLLM's engine arguments for a ``budget`` of draft
    tokens per step; a budget of 0 turns SJD off (no speculative config: vLLM may then schedule asynchronously)."""
    if budget < 0:
        raise ValueError(f"the image Jacobi budget must be >= 0 draft tokens per step, got {budget}")
    if budget == 0:
        return None, {BUDGET_KEY: 0}
    spec = {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": MAX_WINDOW - 1}
    return spec, {BUDGET_KEY: budget}


def budget_of(vllm_config: Any) -> int:
    """The budget an engine was started with (0 when SJD is off)."""
    if getattr(vllm_config, "speculative_config", None) is None:
        return 0
    extra = getattr(vllm_config, "additional_config", None) or {}
    return int(extra.get(BUDGET_KEY, MAX_WINDOW - 1))
