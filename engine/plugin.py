"""vLLM general plugin: our Chameleon model takes the architecture name over.

vLLM calls ``register`` in every process it starts, so it must be re-entrant.
"""

ARCHITECTURE = "ChameleonForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, "engine.chameleon:ChameleonForConditionalGeneration")
