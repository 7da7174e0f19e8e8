"""Model side of chameleon-serve: vLLM plugin, logits processors, VQGAN, stream splitting."""
