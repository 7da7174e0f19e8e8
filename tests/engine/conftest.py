"""Shared by the engine tests: tiny checkpoints, and the engine's env."""

from pathlib import Path

import pytest

from engine.offline.tiny import TinySpec, make_tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: ``TinySpec`` -> checkpoint dir, written once per spec."""
    made: dict[TinySpec, Path] = {}

    def make(spec: TinySpec) -> Path:
        if spec not in made:
            made[spec] = make_tiny(tmp_path_factory.mktemp("ckpt"), spec)
        return made[spec]

    return make


@pytest.fixture(scope="module")
def engine_env():
    """Env for engines started in this module (read when vLLM spawns its processes).

    ``apply_model`` ships a function to the workers, which vLLM pickles only when
    insecure serialization is allowed; tests only, never the server.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        yield mp
