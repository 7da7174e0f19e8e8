"""Pydantic wire models (OpenAI format plus vLLM/chameleon-serve extensions); validation only."""
