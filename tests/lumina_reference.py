"""Greedy reference for Lumina-mGPT image spans: transformers' Chameleon on the same weights (Lumina's class
adds only training hooks to it), with its authors' span rule enforced here in plain Python, one token at a
time, as their ``MultiModalLogitsProcessor`` does it (Alpha-VLLM/Lumina-mGPT@104abe4
``lumina_mgpt/inference_solver.py``): after BOI the height and width tokens, then per row ``cols`` codes
and the end-of-line token, then EOI. Written independently of ``engine/span_grammar.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ChameleonForConditionalGeneration

from engine.span_format import EOL_NAME, size_token_name
from engine.vocab import TokenLayout


@torch.inference_mode()
def lumina_greedy_image(model_dir: Path, prompt: list[int], rows: int, cols: int) -> list[int]:
    """BOI, the size tokens, the greedy codes row by row with their EOLs, EOI."""
    layout = TokenLayout.from_checkpoint(model_dir)
    vocab = _vocabulary(model_dir)
    eol = vocab[EOL_NAME]
    height, width = vocab[size_token_name(rows // 2)], vocab[size_token_name(cols // 2)]
    codes = torch.tensor(layout.code_to_id)
    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    written: list[int] = []
    cache = None
    pending = [*prompt]
    # the model reads every forced token too; only code positions take its argmax
    plan = [layout.boi, height, width, *([None] * cols + [eol]) * rows, layout.eoi]
    for forced in plan:
        out = model.model(input_ids=torch.tensor([pending]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        if forced is None:
            logits = model.lm_head(out.last_hidden_state[0, -1])  # raw head: transformers' forward masks codes
            token = int(codes[logits[codes].argmax()])
        else:
            token = forced
        written.append(token)
        pending = [token]
    return written


def _vocabulary(model_dir: Path) -> dict[str, int]:
    import json

    return json.loads((model_dir / "config.json").read_text())["vocabulary_map"]
