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
from dataclasses import dataclass

from engine.frontend.client import ChameleonEngine
from engine.frontend.images import decode_image
from schemas.chat import ChatMessage, ImagePart, TextPart
from server import metrics
from server.errors import BadRequest
from server.image_urls import image_url_bytes
from server.settings import Settings


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: list[int]
    num_images: int


async def build_chat_prompt(
    engine: ChameleonEngine, messages: list[ChatMessage], settings: Settings, *, max_images: int,
    plain: bool = False,
) -> Prompt:
    """The prompt of ``messages``: in the chat template (the server's, else the checkpoint's), else the default
    chat format; ``plain``: BOS and the messages' parts with nothing between them, as Emu3's authors prompt
    image generation (``Family.plain_image_prompt``)."""
    urls = [p.image_url.url for m in messages for p in m.parts if isinstance(p, ImagePart)]
    if len(urls) > max_images:
        raise BadRequest(f"at most {max_images} images per request, got {len(urls)}", param="messages")
    raw = await asyncio.gather(*(image_url_bytes(u, settings.remote_images) for u in urls))
    pil_images = await asyncio.to_thread(lambda: [decode_image(b, settings.max_image_pixels) for b in raw])
    spans = await engine.encode_images(pil_images)
    metrics.record_images_encoded(len(spans))
    template = settings.chat_template or engine.chat_template
    if plain:
        ids = _default_ids(engine, messages, spans, end_turns=False)
    elif template:
        ids = _templated_ids(engine, messages, spans, template)
    else:
        ids = _default_ids(engine, messages, spans)
    return Prompt(token_ids=ids, num_images=len(spans))


def _default_ids(engine: ChameleonEngine, messages: list[ChatMessage], spans: list[list[int]],
                 end_turns: bool = True) -> list[int]:
    """BOS, each message's parts, each message closed by the end-of-turn token where ``end_turns``."""
    tok = engine.tokenizer
    ids: list[int] = [tok.bos_token_id] if tok.bos_token_id is not None else []
    next_span = iter(spans)
    for message in messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                ids += tok.encode(part.text, add_special_tokens=False)
            else:
                ids += next(next_span)
        if end_turns:
            ids.append(engine.layout.sep)
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
    if bos and ids[:1] != [engine.tokenizer.bos_token_id]:  # a tokenizer that adds none (Emu3's processor adds it)
        ids.insert(0, engine.tokenizer.bos_token_id)
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
