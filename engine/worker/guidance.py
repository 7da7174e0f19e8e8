"""Classifier-free guidance of image codes inside vLLM's continuous batching.

A guided request is one vLLM request. Its unconditional twin (the negative prompt, or an empty turn,
followed by the same tokens the request writes) is not a second request: it lives here, beside the
request's batch row, with its keys and values in a preallocated cache of the model's own
(``engine.worker.private_kv.PrivateKV``). At every step inside an image span, the twins of all guided
rows are brought up to date in one forward (``engine.worker.private_kv.PrivateBatch``: each twin's new tokens
packed one twin after another, attention padded over their caches): one token per twin in the steady
state, the prompt and BOI at an image's first code, and the text written since the last image, or the
whole history after a preemption, when there is more to catch up. Where a row samples a code (a device
mask: the grammar's forced tokens are not read back), its logits become ``uncond + scale * (cond - uncond)``;
the span grammar then samples them as usual.

Why not a companion request: vLLM schedules requests independently (arrival, chunked prefill,
preemption), so two rows cannot be kept in the same step without patching its scheduler; a twin that
belongs to the row is in lockstep by construction, is dropped with it (finish, abort, preemption),
and is rebuilt from the row's history when a preempted request resumes. Under tensor parallelism every
rank runs the same twins on its own shard in the same order, so their layers' collectives pair up. The
cost: the twin's cache is outside vLLM's KV budget (``PrivateKV.nbytes`` per guided request; the server
reports it and can cap it) and the twins' forward is eager, beside vLLM's compiled one.

On Model Runner V2 the request's tokens stay on the device, and the processor never reads them back
(``engine/worker/runner_v2.py``): there twins follow every token their request commits, on every step, fed by
gathers from the device history at positions the host knows, and rows are guided by a device mask where
they sample a code. The twin's history, and so its logits, are the same as on V1.

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

from engine.shared.request_options import RequestOptions
from engine.worker.live import live_model
from engine.worker.private_kv import PrivateBatch, PrivateKV
from engine.worker.transfers import to_device


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

    @property
    def span_only(self) -> bool:
        """Whether twins follow the open span only (Lumina-mGPT), not the whole reply."""
        return self._span_boi is not None

    def add(self, slot: int, params: RequestOptions, max_tokens: int) -> None:
        self._twins[slot] = _Twin(params.uncond_prompt, params.cfg_scale, len(params.uncond_prompt) + max_tokens) \
            if params.guided else None

    def remove(self, slot: int) -> None:
        self._twins[slot] = None

    def move(self, src: int, dst: int, swap: bool) -> None:
        self._twins[dst], self._twins[src] = self._twins[src], (self._twins[dst] if swap else None)

    def any(self, slots: np.ndarray) -> bool:
        return any(self._twins[s] is not None for s in slots)

    def apply(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray,
              outputs: Sequence[Sequence[int]], committed: Sequence[int], sampling: torch.Tensor) -> None:
        """Guide row ``rows[i]`` (request in ``slots[i]``, ``committed[i]`` real tokens in ``outputs[i]``) in
        place where ``sampling[i]`` (on the device) says it samples a code, for the rows whose request is guided:
        one forward over all their twins. The V1 runner's form: outputs are host lists, and rows come here only
        inside a span."""
        guided = [(i, row, self._twins[slot], output[:n])
                  for i, (row, slot, output, n) in enumerate(zip(rows, slots, outputs, committed, strict=True))
                  if self._twins[slot] is not None]
        if not guided:
            return
        model = live_model()
        ids: list[int] = []
        positions: list[int] = []
        steps: list[int] = []
        for _, _, twin, output in guided:
            if twin.cache is None:
                twin.cache = model.new_private_kv(twin.capacity)
            if self._span_boi is not None:
                self._follow_span(twin, output, len(output))
            history = [*twin.prompt, *output[twin.anchor:]]
            ids += history[twin.cache.length :]
            positions += range(twin.cache.length, len(history))
            steps.append(len(history) - twin.cache.length)
        device = logits.device
        index = to_device(np.array([i for i, _, _, _ in guided]), device)
        self._guide(logits, [row for _, row, _, _ in guided], [t for _, _, t, _ in guided],
                    to_device(np.array(ids), device), positions, steps, only=sampling[index])

    def apply_on_device(self, logits: torch.Tensor, slots: np.ndarray, num_output: np.ndarray,
                        prompt_len: np.ndarray, history: torch.Tensor, sampling: torch.Tensor) -> None:
        """Model Runner V2's form, without a device->host read: guide row ``i`` of ``logits`` (request in
        ``slots[i]``, with ``num_output[i]`` output tokens after a ``prompt_len[i]``-token prompt, known on the
        host) where ``sampling[i]`` (on the device) says it samples a code.

        Twins follow every token their request commits, read from ``history`` (``all_token_ids``) on the device
        by positions the host knows; so they run on every step of a guided request, text or image, one token
        each in the steady state. Span-only twins (Lumina-mGPT) start at output 0: the open span of an
        image-only reply, the only ones this runner guides (``engine/shared/capabilities.py``).
        """
        model = live_model()
        index: list[int] = []
        twins: list[_Twin] = []
        positions: list[np.ndarray] = []
        source: list[np.ndarray] = []  # per new token: its place in the request's history, or -1 (the prompt's)
        prompt_ids: list[np.ndarray] = []  # per new token: its id where it is the twin's prompt's, else 0
        for i, slot in enumerate(slots):
            twin = self._twins[slot]
            if twin is None:
                continue
            if twin.cache is None:
                twin.cache = model.new_private_kv(twin.capacity)
            new = np.arange(twin.cache.length, len(twin.prompt) + int(num_output[i]))
            if not len(new):  # a prefill chunk: nothing committed, nothing sampled
                continue
            index.append(i)
            twins.append(twin)
            positions.append(new)
            source.append(np.where(new < len(twin.prompt), -1, prompt_len[i] + new - len(twin.prompt)))
            prompt_ids.append(np.asarray((*twin.prompt, 0), dtype=np.int64)[np.minimum(new, len(twin.prompt))])
        if not twins:
            return
        device = logits.device
        rows = np.repeat(slots[index], [len(p) for p in positions])
        at = np.concatenate(source)
        ids = torch.where(to_device(at < 0, device), to_device(np.concatenate(prompt_ids), device),
                          history[to_device(rows, device), to_device(np.maximum(at, 0), device)].long())
        self._guide(logits, index, twins, ids, np.concatenate(positions), [len(p) for p in positions],
                    only=sampling[to_device(np.array(index), device)])

    def _guide(self, logits: torch.Tensor, rows: Sequence[int], twins: Sequence[_Twin], ids: torch.Tensor,
               positions: Sequence[int] | np.ndarray, steps: Sequence[int], only: torch.Tensor | None = None) -> None:
        """One forward of ``twins`` over their new tokens (``ids``, packed, ``steps`` each), then rows ``rows``
        of ``logits`` become ``uncond + scale * (cond - uncond)`` (where ``only`` says, if given)."""
        device = logits.device
        batch = PrivateBatch([t.cache for t in twins], steps, device)
        uncond = live_model().private_logits(ids, to_device(np.asarray(positions, dtype=np.int64), device), batch)
        index = to_device(np.asarray(rows, dtype=np.int64), device)
        scale = to_device(np.array([t.scale for t in twins], dtype=np.float32), device).unsqueeze(1)
        cond = logits[index].float()
        guided = uncond + scale * (cond - uncond)
        if only is not None:
            guided = torch.where(only.unsqueeze(1), guided, cond)
        logits.index_copy_(0, index, guided.to(logits.dtype))

    def _follow_span(self, twin: _Twin, output: Sequence[int], n: int) -> None:
        """Restart ``twin`` at a BOI committed since the last guided step (a new image)."""
        new = output[twin.seen:n]
        if self._span_boi in new:
            twin.anchor = twin.seen + len(new) - 1 - list(reversed(new)).index(self._span_boi)
            if twin.cache is not None:
                twin.cache.length = 0
        twin.seen = n
