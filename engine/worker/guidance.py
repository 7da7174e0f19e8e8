"""Classifier-free guidance of image codes as batch rows: each guided request (the *row*) runs beside an
unconditional *companion*, a request of its own in the same forward, whose keys and values vLLM pages like any
request's.

The companion's sequence is the unconditional prompt (the negative prompt, or an empty turn) followed by the
row's reply: vLLM's scheduler, extended in ``engine/core/guided_pairs.py``, makes one for each image span the
row writes, from the row's committed tokens up to that span's BOI, and schedules the two in lockstep from
there to the span's EOI. Here, in the span processor's step, the two rows pair up by the mark the scheduler
gave both (``engine/shared/companions.py``): where the row samples a code its logits become
``uncond + scale * (cond - uncond)``, the span grammar draws (or forces) the row's token as usual, and the
companion's row is set to the row's, so both write the same token.

Lumina-mGPT's authors guide from the image alone: their unconditional sequence is the open span from its
BOI on, started afresh for every image (Alpha-VLLM/Lumina-mGPT@104abe4 ``inference_solver.py``,
``LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor``). Where the span format says so
(``SpanFormat.guided_from_boi``) the companion is its prompt (empty unless a negative prompt is given) followed by
the span's BOI.

Why a companion request. Guidance doubles the rows of the image steps; what it must not do is run a second
forward, or copy caches. The alternatives:

- *A twin held by the processor* (what this project did first): a private cache per guided request, its
  tokens run in a second, eager forward whose attention copied every twin's whole history into a padded batch,
  at every layer and step: ~56 ms per step at 32 guided rows on an H200, against ~8 ms for the unguided step,
  and memory outside vLLM's budget.
- *Extra rows inside the model's forward* over a paged private pool: the weights are read once, but the rows
  are invisible to vLLM, so its budget, preemption, CUDA graphs (captured per token count) and attention
  metadata all need mirroring in the model.
- *A companion request* (this): vLLM's own paged attention, CUDA graphs, KV budget, preemption and prefix
  cache apply to it unchanged (the family's default negative prompt is cached once and shared by every
  companion). The cost is the scheduler extension: lockstep (both or neither in a step), and, under async
  scheduling, a row that may open a span with its newest token waits for it before its next step, so guided
  interleaved replies write text at half the step rate; image-only replies do not wait.

Under tensor parallelism every rank gets the same scheduled batch, so the pairs agree.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.shared.companions import pair_mark
from engine.shared.request_options import RequestOptions
from engine.worker.transfers import to_device


class Guidance:
    """Which rows of a batch pair up (a guided row and its companion), and the guided logits."""

    def __init__(self, max_slots: int) -> None:
        self._keys: list[str | None] = [None] * max_slots  # the pair mark of the request in each slot
        self._companion = np.zeros(max_slots, dtype=bool)
        self._scale = np.ones(max_slots, dtype=np.float32)

    def add(self, slot: int, options: RequestOptions, extra_args: dict | None) -> None:
        key, companion = pair_mark(extra_args)
        self._keys[slot] = key if companion or options.guided else None
        self._companion[slot] = companion
        self._scale[slot] = options.cfg_scale

    def remove(self, slot: int) -> None:
        self._keys[slot] = None

    def move(self, src: int, dst: int, swap: bool) -> None:
        keys = self._keys
        keys[dst], keys[src] = keys[src], (keys[dst] if swap else None)
        for column in (self._companion, self._scale):
            column[[dst, src]] = column[[src, dst]]

    def pairs(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their companions' rows): indices into ``slots`` (the batch's rows), both present."""
        rows: dict[str, int] = {}
        companions: dict[str, int] = {}
        for i, slot in enumerate(slots):
            key = self._keys[slot]
            if key is not None:
                (companions if self._companion[slot] else rows)[key] = i
        both = [(rows[k], c) for k, c in companions.items() if k in rows]
        if not both:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        cond, uncond = np.array(both, dtype=np.int64).T
        return cond, uncond

    def guided(self, cond: torch.Tensor, uncond: torch.Tensor, slots: np.ndarray, sampling: torch.Tensor
               ) -> torch.Tensor:
        """``cond`` (rows of requests in ``slots``) as ``uncond + scale * (cond - uncond)`` where ``sampling`` (on
        the device) says the row samples a code, else as it is."""
        scale = to_device(self._scale[slots], cond.device).unsqueeze(1)
        c, u = cond.float(), uncond.float()
        return torch.where(sampling.unsqueeze(1), u + scale * (c - u), c).to(cond.dtype)

    @staticmethod
    def mirror(logits: torch.Tensor, rows: torch.Tensor, companions: torch.Tensor) -> torch.Tensor:
        """The companions' rows set to their rows' (after the grammar: one finite token), so both write it
        (``rows``, ``companions``: the pairs' row indices, on the device)."""
        return logits.index_copy_(0, companions, logits.index_select(0, rows))
