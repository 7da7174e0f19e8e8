"""Classifier-free guidance of image codes inside vLLM's continuous batching.

A guided request is one vLLM request. Its unconditional twin (the negative prompt, or an empty turn,
followed by the same tokens the request writes) is not a second request: it lives here, beside the
request's batch row, with its keys and values in a preallocated cache of the model's own
(``engine.private_kv.PrivateKV``). At every step that samples an image code, the twins of all guided
rows are brought up to date in one forward (``engine.private_kv.PrivateBatch``: each twin's new tokens
packed one twin after another, attention padded over their caches): one code per twin in the steady
state, the prompt and BOI at an image's first code, and the text written since the last image, or the
whole history after a preemption, when there is more to catch up. The rows' logits become
``uncond + scale * (cond - uncond)``; the span grammar then samples them as usual.

Why not a companion request: vLLM schedules requests independently (arrival, chunked prefill,
preemption), so two rows cannot be kept in the same step without patching its scheduler; a twin that
belongs to the row is in lockstep by construction, is dropped with it (finish, abort, preemption),
and is rebuilt from the row's history when a preempted request resumes. Under tensor parallelism every
rank runs the same twins on its own shard in the same order, so their layers' collectives pair up. The
cost: the twin's cache is outside vLLM's KV budget (``PrivateKV.nbytes`` per guided request; the server
reports it and can cap it) and the twins' forward is eager, beside vLLM's compiled one.

Lumina-mGPT's authors guide from the image alone: their unconditional sequence is the open span from its
BOI on, started afresh for every image (Alpha-VLLM/Lumina-mGPT@104abe4 ``inference_solver.py``,
``LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor``). With ``span_boi`` set, a twin is
its prompt (empty unless a negative prompt is given) followed by the open span only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.chameleon import live_model
from engine.private_kv import PrivateBatch, PrivateKV
from engine.span_grammar import SpanParams
from engine.transfers import to_device


@dataclass(slots=True)
class _Twin:
    prompt: tuple[int, ...]
    scale: float
    capacity: int
    cache: PrivateKV | None = None  # allocated at the first guided step
    anchor: int = 0  # output index where the twin's own tokens start (span-only twins: the open span's BOI)
    seen: int = 0  # output tokens scanned for a new BOI


class Guidance:
    """Per-slot unconditional twins, and the guided logits of the rows that sample an image code."""

    def __init__(self, max_slots: int, span_boi: int | None = None) -> None:
        self._twins: list[_Twin | None] = [None] * max_slots
        self._span_boi = span_boi  # Lumina-mGPT: twins follow the open span only, from this BOI token on

    def add(self, slot: int, params: SpanParams, max_tokens: int) -> None:
        self._twins[slot] = _Twin(params.uncond_prompt, params.cfg_scale, len(params.uncond_prompt) + max_tokens) \
            if params.guided else None

    def remove(self, slot: int) -> None:
        self._twins[slot] = None

    def move(self, src: int, dst: int, swap: bool) -> None:
        self._twins[dst], self._twins[src] = self._twins[src], (self._twins[dst] if swap else None)

    def any(self, slots: np.ndarray) -> bool:
        return any(self._twins[s] is not None for s in slots)

    def apply(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray,
              outputs: Sequence[Sequence[int]], committed: Sequence[int]) -> None:
        """Guide row ``rows[i]`` (request in ``slots[i]``, ``committed[i]`` real tokens in
        ``outputs[i]``) in place, for the rows whose request is guided: one forward over all their twins."""
        guided = [(row, self._twins[slot], output[:n])
                  for row, slot, output, n in zip(rows, slots, outputs, committed, strict=True)
                  if self._twins[slot] is not None]
        if not guided:
            return
        model = live_model()
        ids: list[int] = []
        positions: list[int] = []
        steps: list[int] = []
        for _, twin, output in guided:
            if twin.cache is None:
                twin.cache = model.new_private_kv(twin.capacity)
            if self._span_boi is not None:
                self._follow_span(twin, output, len(output))
            history = [*twin.prompt, *output[twin.anchor:]]
            ids += history[twin.cache.length :]
            positions += range(twin.cache.length, len(history))
            steps.append(len(history) - twin.cache.length)
        device = logits.device
        batch = PrivateBatch([t.cache for _, t, _ in guided], steps, device)
        uncond = model.private_logits(to_device(np.array(ids), device), to_device(np.array(positions), device), batch)
        index = to_device(np.array([row for row, _, _ in guided]), device)
        scale = to_device(np.array([t.scale for _, t, _ in guided], dtype=np.float32), device).unsqueeze(1)
        cond = logits[index].float()
        logits[index] = (uncond + scale * (cond - uncond)).to(logits.dtype)

    def _follow_span(self, twin: _Twin, output: Sequence[int], n: int) -> None:
        """Restart ``twin`` at a BOI committed since the last guided step (a new image)."""
        new = output[twin.seen:n]
        if self._span_boi in new:
            twin.anchor = twin.seen + len(new) - 1 - list(reversed(new)).index(self._span_boi)
            if twin.cache is not None:
                twin.cache.length = 0
        twin.seen = n

    def nbytes(self) -> int:
        return sum(t.cache.nbytes for t in self._twins if t is not None and t.cache is not None)
