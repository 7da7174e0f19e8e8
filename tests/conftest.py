"""Test-wide settings: a small vLLM CPU KV cache, set before anything imports vLLM."""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
