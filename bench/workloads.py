"""What each benchmark request asks for: text chat, image-in chat, image-out chat, completions, a mix.

A workload is a name plus a function from the request index to the arguments of one
streamed request, spelled as the ``openai`` client's keyword arguments; fixed output lengths
(``ignore_eos`` + ``min_tokens``) keep text figures comparable across servers and runs.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True, slots=True)
class Call:
    """One request: ``route`` is "chat" or "completions"; ``args`` as for the openai client's ``create``
    (``extra_body`` merged into the body)."""

    route: str
    args: dict


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    build: Callable[[int], Call]


def noise_png_url(seed: int, side: int = 64) -> str:
    """A data: URL of a random RGB PNG; the server resizes it to the model's resolution."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _fixed_length(tokens: int) -> dict:
    return {"max_tokens": tokens, "temperature": 0.0,
            "extra_body": {"ignore_eos": True, "min_tokens": tokens}}


def text_chat(tokens: int, token_ids: bool = False) -> Workload:
    """With ``token_ids``, vLLM's ``return_token_ids`` (our server has it; OpenAI's API refuses it): a token
    whose text is held back, as bytes short of a UTF-8 character are, still arrives in a chunk of its own,
    so inter-token latency is timed per token rather than per piece of text."""
    def build(i: int) -> Call:
        args = _fixed_length(tokens)
        if token_ids:
            args["extra_body"]["return_token_ids"] = True
        return Call("chat", {"messages": [{"role": "user", "content": f"Tell a story, number {i}."}], **args})
    return Workload("text", build)


def image_in_chat(tokens: int, side: int = 64) -> Workload:
    urls = [noise_png_url(seed, side) for seed in range(8)]  # encoded once; the server still VQ-encodes each

    def build(i: int) -> Call:
        content = [{"type": "text", "text": "What is in this picture?"},
                   {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}}]
        return Call("chat", {"messages": [{"role": "user", "content": content}], **_fixed_length(tokens)})
    return Workload("image-in", build)


def image_out_chat() -> Workload:
    def build(i: int) -> Call:
        return Call("chat", {"messages": [{"role": "user", "content": f"Draw picture {i}."}],
                             "modalities": ["image"], "seed": i})
    return Workload("image-out", build)


def image_rows_chat(image_tokens: int) -> Workload:
    """Image-out stopped three tokens before its EOI (``image_tokens``: BOI to EOI), short of its last code in
    either span format: the engine samples the same image rows, but no image completes, so none is decoded.
    The control that tells a decode's cost to other streams from the batch's growth."""
    def build(i: int) -> Call:
        call = image_out_chat().build(i)
        return Call(call.route, {**call.args, "max_tokens": image_tokens - 3})
    return Workload("image-rows", build)


def guided_image_out_chat(cfg_scale: float) -> Workload:
    """Image-out with classifier-free guidance (an empty unconditional turn)."""
    def build(i: int) -> Call:
        return Call("chat", {"messages": [{"role": "user", "content": f"Draw picture {i}."}],
                             "modalities": ["image"], "seed": i, "extra_body": {"cfg_scale": cfg_scale}})
    return Workload("guided-image-out", build)


def completions(prompt: str | list[int], tokens: int) -> Workload:
    """The /v1/completions route with the same prompt (text or token ids) on every request."""
    def build(i: int) -> Call:
        return Call("completions", {"prompt": prompt, **_fixed_length(tokens)})
    return Workload("completions", build)


def mix(parts: list[Workload]) -> Workload:
    """Round-robin over ``parts``: request i is part ``i % len(parts)``."""
    def build(i: int) -> Call:
        return parts[i % len(parts)].build(i // len(parts))
    return Workload("mix", build)


def standard(tokens: int) -> dict[str, Workload]:
    """The four chat workloads of the load generator, by name."""
    text, image_in, image_out = text_chat(tokens), image_in_chat(tokens), image_out_chat()
    return {w.name: w for w in (text, image_in, image_out, mix([text, image_in, image_out]))}
