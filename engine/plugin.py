"""vLLM general plugin: our Chameleon model takes the architecture name over.

vLLM calls ``register`` in every process it starts, so it must be re-entrant.
"""

ARCHITECTURE = "ChameleonForConditionalGeneration"
# Lumina-mGPT's class only adds training hooks to Chameleon's (same weights, same names: Alpha-VLLM/Lumina-mGPT
# lumina_mgpt/model/modeling_xllmx_chameleon.py), so our model serves it; the span grammar follows its config.
LUMINA_ARCHITECTURE = "ChameleonXLLMXForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    for name in (ARCHITECTURE, LUMINA_ARCHITECTURE):
        ModelRegistry.register_model(name, "engine.worker.model:ChameleonForConditionalGeneration")
