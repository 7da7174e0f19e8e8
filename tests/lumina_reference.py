"""Greedy reference for Lumina-mGPT image spans: transformers' Chameleon on the same weights (Lumina's class
adds only training hooks to it), with its authors' span rule enforced here in plain Python, one token at a
time, as their ``MultiModalLogitsProcessor`` does it (Alpha-VLLM/Lumina-mGPT@104abe4
``lumina_mgpt/inference_solver.py``): after BOI the height and width tokens, then per row ``cols`` codes
and the end-of-line token, then EOI. Written independently of ``engine/worker/span_grammar.py``. The weights are
read from the checkpoint's shards as their code reads them: each q/k norm of one row per model-parallel
rank is repeated over that rank's heads (``ChameleonLayerNorm.repeat_param`` in their modeling_chameleon.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from engine.shared.families.lumina import EOL_NAME, size_token_name
from engine.shared.vocab import TokenLayout


@torch.inference_mode()
def lumina_greedy_image(model_dir: Path, prompt: list[int], rows: int, cols: int, cfg_scale: float = 1.0) -> list[int]:
    """BOI, the size tokens, the greedy codes row by row with their EOLs, EOI. With ``cfg_scale``, each code
    from ``uncond + scale * (cond - uncond)``, the unconditional sequence being the image alone from its BOI,
    with a cache of its own, as the authors' guidance processor runs it."""
    layout = TokenLayout.from_checkpoint(model_dir)
    vocab = _vocabulary(model_dir)
    eol = vocab[EOL_NAME]
    height, width = vocab[size_token_name(rows // 2)], vocab[size_token_name(cols // 2)]
    codes = torch.tensor(layout.code_to_id)
    model = authors_model(model_dir)
    caches: list = [None, None]

    def head(row: int, ids: list[int]) -> torch.Tensor:  # the raw lm head: transformers' forward masks codes
        out = model.model(input_ids=torch.tensor([ids]), past_key_values=caches[row], use_cache=True)
        caches[row] = out.past_key_values
        return model.lm_head(out.last_hidden_state[0, -1])

    written: list[int] = []
    pending = [*prompt]
    plan = [layout.boi, height, width, *([None] * cols + [eol]) * rows, layout.eoi]
    for forced in plan:
        cond = head(0, pending)
        if written and cfg_scale != 1.0:  # the unconditional sequence reads from BOI on
            free = head(1, written if caches[1] is None else written[-1:])
        if forced is None:
            logits = free + cfg_scale * (cond - free) if cfg_scale != 1.0 else cond
            token = int(codes[logits[codes].argmax()])
        else:
            token = forced
        written.append(token)
        pending = [token]
    return written


def authors_model(model_dir: Path) -> ChameleonForConditionalGeneration:
    """transformers' Chameleon (float32) holding the checkpoint's weights as Lumina-mGPT's own code runs them."""
    import json

    from safetensors.torch import load_file

    config = ChameleonConfig.from_pretrained(model_dir)
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state |= load_file(model_dir / shard)
    for name, tensor in state.items():
        if ".q_norm." in name or ".k_norm." in name:
            heads = config.num_attention_heads if ".q_norm." in name else config.num_key_value_heads
            per_rank = heads // config.model_parallel_size
            state[name] = tensor.repeat_interleave(per_rank, dim=0)
    model = ChameleonForConditionalGeneration(config).float().eval()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def _vocabulary(model_dir: Path) -> dict[str, int]:
    import json

    return json.loads((model_dir / "config.json").read_text())["vocabulary_map"]
