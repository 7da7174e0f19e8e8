"""Shared by the engine tests: tiny checkpoints with varied norms, and the engine's env."""

from pathlib import Path

import pytest
import torch

from engine.tiny import TinySpec, make_tiny


def _vary_norms(model_dir: Path, seed: int) -> None:
    """Give every qk-norm and RMSNorm non-trivial weights (make_tiny leaves ones/zeros).

    Varied per-head scales and shifts are what the qk-norm, its TP sharding and the
    Swin norm placement need to be tested against.
    """
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    state = load_file(path)
    gen = torch.Generator().manual_seed(seed + 7)
    for name, t in state.items():
        if "norm" not in name or name.startswith("model.vqmodel."):
            continue
        if name.endswith(".weight"):
            state[name] = (0.5 + torch.rand(t.shape, generator=gen)).to(t.dtype)
        else:
            state[name] = (0.3 * torch.randn(t.shape, generator=gen)).to(t.dtype)
    save_file(state, path, metadata={"format": "pt"})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: ``TinySpec`` -> checkpoint dir with varied norms, written once per spec."""
    made: dict[TinySpec, Path] = {}

    def make(spec: TinySpec) -> Path:
        if spec not in made:
            made[spec] = make_tiny(tmp_path_factory.mktemp("ckpt"), spec)
            _vary_norms(made[spec], spec.seed)
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
