"""Chat messages -> prompt token ids, with input images as real image-code spans.

Default Chameleon chat format, for checkpoints without a chat template: BOS,
then each message's parts in order (text as text, each image as BOI + codes +
EOI), each message closed by the end-of-turn token ``<reserved08706>``; the
model's reply follows and ends with that token too. Roles are not written:
this is the format Chameleon's processor uses for chat (prompt, then the
separator). A checkpoint's own chat template, when it has one, is used instead;
it sees image parts as ``{"type": "image"}`` and must write ``<image>`` for each.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

from engine.images import decode_image
from engine.runner import ChameleonEngine
from schemas.chat import ChatMessage, ImagePart, TextPart
from server import metrics
from server.errors import BadRequest


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: list[int]
    num_images: int


def _image_bytes(url: str) -> bytes:
    """Bytes of a ``data:image/...;base64,`` URL; other schemes are refused."""
    if not url.startswith("data:"):
        raise BadRequest("image_url must be a data: URL (data:image/png;base64,...)", param="image_url")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise BadRequest("image_url must be base64 image data (data:image/...;base64,...)", param="image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image_url holds invalid base64", param="image_url") from None


async def build_chat_prompt(
    engine: ChameleonEngine, messages: list[ChatMessage], *, max_images: int, max_pixels: int,
    chat_template: str | None,
) -> Prompt:
    images = [p.image_url.url for m in messages for p in m.parts if isinstance(p, ImagePart)]
    if len(images) > max_images:
        raise BadRequest(f"at most {max_images} images per request, got {len(images)}", param="messages")
    pil_images = await asyncio.to_thread(lambda: [decode_image(_image_bytes(u), max_pixels) for u in images])
    spans = await engine.encode_images(pil_images)
    metrics.record_images_encoded(len(spans))
    template = chat_template or getattr(engine.tokenizer, "chat_template", None)
    if template:
        ids = _templated_ids(engine, messages, spans, template)
    else:
        ids = _default_ids(engine, messages, spans)
    return Prompt(token_ids=ids, num_images=len(spans))


def _default_ids(engine: ChameleonEngine, messages: list[ChatMessage], spans: list[list[int]]) -> list[int]:
    tok, sep = engine.tokenizer, engine.layout.sep
    ids: list[int] = [tok.bos_token_id] if tok.bos_token_id is not None else []
    next_span = iter(spans)
    for message in messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                ids += tok.encode(part.text, add_special_tokens=False)
            else:
                ids += next(next_span)
        ids.append(sep)
    return ids


def _templated_ids(engine: ChameleonEngine, messages: list[ChatMessage], spans: list[list[int]],
                   template: str) -> list[int]:
    conversation = [
        {"role": m.role, "content": [{"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                                     for p in m.parts]}
        for m in messages
    ]
    rendered = engine.tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                                    add_generation_prompt=True)
    bos = engine.tokenizer.bos_token
    ids = engine.tokenizer.encode(rendered, add_special_tokens=not (bos and rendered.startswith(bos)))
    placeholder = engine.layout.image_placeholder
    if ids.count(placeholder) != len(spans):
        raise BadRequest(f"the chat template wrote {ids.count(placeholder)} <image> placeholders "
                         f"for {len(spans)} images", param="messages")
    out: list[int] = []
    next_span = iter(spans)
    for tid in ids:
        out += next(next_span) if tid == placeholder else [tid]
    return out


def build_text_prompt(engine: ChameleonEngine, prompt: str | list[int]) -> list[int]:
    """Token ids of a completions prompt: text gets BOS and the tokenizer; ids pass as they are."""
    if isinstance(prompt, str):
        return engine.tokenizer.encode(prompt, add_special_tokens=True)
    if any(not 0 <= t < engine.layout.vocab_size for t in prompt):
        raise BadRequest("prompt token id out of the vocabulary", param="prompt")
    return list(prompt)
