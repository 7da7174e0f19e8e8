"""The Emu3 oracle: transformers' ``Emu3ForConditionalGeneration`` and ``Emu3Processor`` loaded from the
checkpoint folder, with Emu3's image layout enforced as transformers' own image-generation test and BAAI's
logits helper enforce it (``prefix_allowed_tokens_fn``, ``bench/emu3_baseline.py``): after ``<|image token|>``,
``cols`` codes and ``<|extra_200|>`` per row, then ``<|extra_201|>``, ``<|image end|>`` and the end-of-sequence
token. Written independently of ``engine/worker/span_grammar.py``; the offset is counted from the prompt's end,
where the written image begins (a prompt may hold images of its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.emu3_baseline import layout_rule

EOL, EOF, EOI = "<|extra_200|>", "<|extra_201|>", "<|image end|>"


def emu3_model(model_dir: Path):
    from transformers import Emu3ForConditionalGeneration

    return Emu3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def image_prefix(model_dir: Path, rows: int, cols: int) -> list[int]:
    """``<|image start|>rows*cols<|image token|>`` as Emu3's processor writes it for image generation."""
    from transformers import Emu3Processor

    tokenizer = Emu3Processor.from_pretrained(model_dir).tokenizer
    return tokenizer.encode(f"<|image start|>{rows}*{cols}<|image token|>", add_special_tokens=False)


def _codes(model) -> list[int]:
    return [tid for name, tid in model.config.vocabulary_map.items() if name.startswith("<|visual token")]


@torch.inference_mode()
def greedy_image(model, prompt: list[int], rows: int, cols: int) -> list[int]:
    """transformers ``generate`` (greedy) after ``prompt`` (which ends with the image prefix), the layout as
    the authors' rule (``bench/emu3_baseline.py``): the rows with their EOLs, EOF, EOI (the end-of-sequence
    token after them left out)."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=rows * (cols + 1) + 3, do_sample=False,
                         prefix_allowed_tokens_fn=layout_rule(model, len(prompt), rows, cols))
    return out[0, len(prompt):-1].tolist()


@torch.inference_mode()
def guided_greedy_image(model, prompt: list[int], uncond: list[int], rows: int, cols: int, scale: float) -> list[int]:
    """Two forwards per code, conditional (``prompt``) and unconditional (``uncond``), each sequence with its own
    cache and both reading every token written; codes greedy over ``uncond + scale * (cond - uncond)`` of the
    raw logits. Both prompts end with the image prefix. Returns the rows with their EOLs, EOF, EOI."""
    vocab, codes = model.config.vocabulary_map, torch.tensor(_codes(model))
    caches: list = [None, None]

    def step(row: int, ids: list[int]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([ids]), past_key_values=caches[row], use_cache=True)
        caches[row] = out.past_key_values
        return out.logits[0, -1]

    cond, free = step(0, prompt), step(1, uncond)
    written: list[int] = []
    for _ in range(rows):
        for _ in range(cols):
            guided = free + scale * (cond - free)
            token = int(codes[guided[codes].argmax()])
            written.append(token)
            cond, free = step(0, [token]), step(1, [token])
        written.append(vocab[EOL])
        cond, free = step(0, [vocab[EOL]]), step(1, [vocab[EOL]])
    return [*written, vocab[EOF], vocab[EOI]]


@torch.inference_mode()
def decoded_pixels(model, model_dir: Path, span: list[int], rows: int, cols: int) -> torch.Tensor:
    """uint8 [rows * 8, cols * 8, 3]: ``decode_image_tokens`` on the rows, EOF and EOI of ``span`` (+ EOS), then
    the processor's ``postprocess``, as transformers' documentation turns generated tokens into a picture."""
    from transformers import Emu3Processor

    processor = Emu3Processor.from_pretrained(model_dir)
    tokens = torch.tensor([[*span, model.config.text_config.eos_token_id]])
    pixels = model.decode_image_tokens(image_tokens=tokens, height=rows, width=cols)
    image = processor.postprocess(list(pixels.float()), return_tensors="PIL.Image.Image")["pixel_values"][0]
    return torch.from_numpy(np.array(image))
