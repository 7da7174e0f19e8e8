"""The Emu3 oracle: transformers' ``Emu3ForConditionalGeneration`` and ``Emu3Processor`` loaded from the
checkpoint folder, with Emu3's image layout enforced as transformers' own image-generation test and BAAI's
logits helper enforce it (``prefix_allowed_tokens_fn``): after ``<|image token|>``, ``cols`` codes and
``<|extra_200|>`` per row, then ``<|extra_201|>``, ``<|image end|>`` and the end-of-sequence token. Written
independently of ``engine/worker/span_grammar.py``; the offset is counted from the prompt's end, where the
written image begins (a prompt may hold images of its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EOL, EOF, EOI = "<|extra_200|>", "<|extra_201|>", "<|image end|>"


def emu3_model(model_dir: Path):
    from transformers import Emu3ForConditionalGeneration

    return Emu3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def image_prefix(model_dir: Path, rows: int, cols: int) -> list[int]:
    """``<|image start|>rows*cols<|image token|>`` as Emu3's processor writes it for image generation."""
    from transformers import Emu3Processor

    tokenizer = Emu3Processor.from_pretrained(model_dir).tokenizer
    return tokenizer.encode(f"<|image start|>{rows}*{cols}<|image token|>", add_special_tokens=False)


def _vocab(model) -> dict[str, int]:
    return model.config.vocabulary_map


def _codes(model) -> list[int]:
    return [tid for name, tid in _vocab(model).items() if name.startswith("<|visual token")]


@torch.inference_mode()
def greedy_image(model, prompt: list[int], rows: int, cols: int) -> list[int]:
    """transformers ``generate`` (greedy) after ``prompt`` (which ends with the image prefix): the rows with
    their EOLs, EOF, EOI (the end-of-sequence token after them is left out)."""
    vocab, codes = _vocab(model), _codes(model)
    body = rows * (cols + 1)

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
        offset = ids.shape[0] - len(prompt) + 1
        if offset <= body:
            return [vocab[EOL]] if offset % (cols + 1) == 0 else codes
        if offset <= body + 2:
            return [(vocab[EOF], vocab[EOI])[offset - body - 1]]
        return [model.config.text_config.eos_token_id]

    out = model.generate(torch.tensor([prompt]), max_new_tokens=body + 3, do_sample=False,
                         prefix_allowed_tokens_fn=allowed)
    return out[0, len(prompt):-1].tolist()


@torch.inference_mode()
def guided_greedy_image(model, prompt: list[int], uncond: list[int], rows: int, cols: int, scale: float) -> list[int]:
    """Two forwards per code, conditional (``prompt``) and unconditional (``uncond``), each sequence with its own
    cache and both reading every token written; codes greedy over ``uncond + scale * (cond - uncond)`` of the
    raw logits. Both prompts end with the image prefix. Returns the rows with their EOLs, EOF, EOI."""
    vocab, codes = _vocab(model), torch.tensor(_codes(model))
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
    return torch.from_numpy(np.asarray(image))
