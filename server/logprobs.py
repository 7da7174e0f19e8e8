"""vLLM's per-token logprobs -> OpenAI's chat ``logprobs.content`` entries.

Image tokens (BOI, codes, EOI) are left out: ``content`` logprobs describe the
reply's text, and an image is not text. vLLM reports ``-inf`` for tokens the
logits processor forbade; JSON has no infinity, so it is clamped as vLLM's own
server does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.frontend.client import ChameleonEngine
from schemas.chat import ChoiceLogprobs, TokenLogprob, TopLogprob

_FLOOR = -9999.0


def _entry(engine: ChameleonEngine, token_id: int, logprob) -> TopLogprob:
    text = logprob.decoded_token if logprob.decoded_token is not None else engine.tokenizer.decode([token_id])
    value = logprob.logprob if math.isfinite(logprob.logprob) else _FLOOR
    return TopLogprob(token=text, logprob=max(value, _FLOOR), bytes=list(text.encode("utf-8", "replace")))


def chat_logprobs(engine: ChameleonEngine, token_ids: Sequence[int], positions: Sequence[dict], top: int,
                  image_mask: Sequence[bool]) -> ChoiceLogprobs:
    """One entry per text token (``image_mask`` False), each with its ``top`` most likely alternatives by rank."""
    content = []
    for token_id, position, in_image in zip(token_ids, positions, image_mask):
        if in_image:
            continue
        ranked = sorted((lp.rank, tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top)
        chosen = _entry(engine, token_id, position[token_id])
        content.append(TokenLogprob(**chosen.model_dump(),
                                    top_logprobs=[_entry(engine, tid, lp) for _, tid, lp in ranked]))
    return ChoiceLogprobs(content=content)
