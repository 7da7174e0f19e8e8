"""vLLM general plugin: our models take every family's architecture names over (``Family.model_class``).

vLLM calls ``register`` in every process it starts (the API server's and its workers'), so it must be
re-entrant, and it imports only the family registry.
"""


def register() -> None:
    from vllm import ModelRegistry

    from engine.shared.families import FAMILIES

    for family in FAMILIES:
        for name in family.architectures:
            ModelRegistry.register_model(name, family.model_class)
