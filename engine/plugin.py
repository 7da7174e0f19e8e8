"""vLLM general plugin: our models take every family's architecture names over (``Family.model_class``), and
every engine that serves them schedules with guidance companions (``engine/core/guided_pairs.py``).

vLLM calls ``register`` in every process it starts (the API server's and its workers'), so it must be
re-entrant, and it imports only the family registry.
"""

from __future__ import annotations

from typing import Any


class _GuidedScheduling:
    """vLLM's per-architecture config hook (``MODELS_CONFIG_MAP``): our scheduler, unless one is chosen or pipeline
    parallelism is on (its stages receive tokens the scheduler sends, which companions do not take part in)."""

    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        from engine.shared.companions import SCHEDULER

        scheduler = vllm_config.scheduler_config
        if scheduler.scheduler_cls is None and vllm_config.parallel_config.pipeline_parallel_size == 1:
            scheduler.scheduler_cls = SCHEDULER

    @staticmethod
    def verify_and_update_model_config(model_config: Any) -> None:
        return


def register() -> None:
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from engine.shared.families import FAMILIES

    for family in FAMILIES:
        for name in family.architectures:
            ModelRegistry.register_model(name, family.model_class)
            MODELS_CONFIG_MAP[name] = _GuidedScheduling
