"""The image-span grammar and image sampling, once, as batched tensor work over per-slot state.

Outside a span image codes and EOI are forbidden (BOI too unless the request
may write images); after BOI exactly ``image_seq_length`` codes, then EOI. Rows
inside a span are sampled here with the request's image temperature/top-k/top-p
(Anole's inference code: 0.7 / off / 0.9), because vLLM's own temperature and
top-k/top-p run after logits processors; the row is left with that one token
finite, so whatever vLLM does next picks it. No vLLM imports here: the V1 and
V2 adapters (``logits_v1.py``, ``logits_v2.py``) feed it slots and tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.vocab import TokenLayout

TEXT_ONLY, INTERLEAVED, IMAGE_ONLY = 0, 1, 2
_MODES = {frozenset({"text"}): TEXT_ONLY, frozenset({"text", "image"}): INTERLEAVED,
          frozenset({"image"}): IMAGE_ONLY}
DEFAULT_IMAGE_TEMPERATURE = 0.7  # Anole: image tokens at temperature 0.7, top-p 0.9, no top-k
DEFAULT_IMAGE_TOP_K = 0  # 0 = off
DEFAULT_IMAGE_TOP_P = 0.9
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class SpanParams:
    """Per-request grammar arguments, read from ``SamplingParams.extra_args``."""

    mode: int = TEXT_ONLY
    image_temperature: float = DEFAULT_IMAGE_TEMPERATURE
    image_top_k: int = DEFAULT_IMAGE_TOP_K
    image_top_p: float = DEFAULT_IMAGE_TOP_P
    seed: int | None = None

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None, seed: int | None = None) -> SpanParams:
        """Parse and check ``modalities``, ``image_temperature``, ``image_top_k``, ``image_top_p``."""
        xa = extra_args or {}
        modalities = xa.get("modalities", ["text"])
        if isinstance(modalities, str) or not isinstance(modalities, Sequence) or not modalities:
            raise ValueError(f'modalities must be a non-empty list of "text"/"image", got {modalities!r}')
        unknown = [m for m in modalities if m not in ("text", "image")]
        if unknown:
            raise ValueError(f'unknown modality {unknown[0]!r}: expected "text" or "image"')
        temp = xa.get("image_temperature", DEFAULT_IMAGE_TEMPERATURE)
        top_k = xa.get("image_top_k", DEFAULT_IMAGE_TOP_K)
        top_p = xa.get("image_top_p", DEFAULT_IMAGE_TOP_P)
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp >= 0:
            raise ValueError(f"image_temperature must be a number >= 0 (0 = greedy), got {temp!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"image_top_k must be an integer >= 0 (0 = off), got {top_k!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"image_top_p must be in (0, 1], got {top_p!r}")
        return cls(_MODES[frozenset(modalities)], float(temp), top_k, float(top_p), seed)

    @classmethod
    def from_sampling_params(cls, sampling_params: Any) -> SpanParams:
        return cls.from_extra_args(sampling_params.extra_args, sampling_params.seed)


def validate_params(sampling_params: Any) -> None:
    """Raise ValueError for bad span arguments in ``sampling_params.extra_args`` (shared by both adapters)."""
    SpanParams.from_sampling_params(sampling_params)


def span_position(tail: Sequence[int], layout: TokenLayout) -> int:
    """Codes written since an unclosed BOI at the end of ``tail``, or -1 outside a span.

    ``tail`` needs only the last ``image_seq_length + 1`` tokens of the history.
    """
    codes = frozenset(layout.code_to_id)
    for count, tok in enumerate(reversed(tail[-(layout.image_seq_length + 1):])):
        if tok == layout.boi:
            return count
        if tok not in codes:
            return -1
    return -1


def _draw_seed(seed: int, step: int) -> int:
    """A seed per (request seed, output index): draws survive preemption and batch changes."""
    return ((seed & _MASK63) * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) & _MASK63


class SpanGrammar:
    """Per-slot span state (host numpy) and the batched masking/sampling of one logits tensor."""

    def __init__(self, layout: TokenLayout, max_slots: int, device: torch.device | str = "cpu") -> None:
        self.layout, self.n = layout, layout.image_seq_length
        self.device = torch.device(device)
        codes = layout.code_ids()
        self._code_ids = codes.to(self.device)
        self._no_text = torch.cat([codes, torch.tensor([layout.eoi])]).to(self.device)
        self._no_text_boi = torch.cat([self._no_text, torch.tensor([layout.boi], device=self.device)])
        self._is_code = np.zeros(max(layout.vocab_size, int(codes.max()) + 1), dtype=bool)
        self._is_code[codes.numpy()] = True
        self._gen: torch.Generator | None = None
        self.mode = np.zeros(max_slots, dtype=np.int8)
        self.pos = np.full(max_slots, -1, dtype=np.int64)  # codes since BOI; -1 outside a span
        self.num_output = np.zeros(max_slots, dtype=np.int64)  # output tokens accounted for
        self.temperature = np.zeros(max_slots, dtype=np.float32)
        self.top_k = np.zeros(max_slots, dtype=np.int64)
        self.top_p = np.ones(max_slots, dtype=np.float32)
        self.seed = np.full(max_slots, -1, dtype=np.int64)  # -1: unseeded (global RNG)

    @property
    def tail_length(self) -> int:
        """History tokens :meth:`add`/:meth:`resync` need to place a slot."""
        return self.n + 1

    def add(self, slot: int, params: SpanParams, tail: Sequence[int], num_output: int) -> None:
        """(Re)initialise ``slot`` for a request whose history ends with ``tail``."""
        self.mode[slot] = params.mode
        self.temperature[slot] = params.image_temperature
        self.top_k[slot] = params.image_top_k
        self.top_p[slot] = params.image_top_p
        self.seed[slot] = -1 if params.seed is None else params.seed & _MASK63
        self.resync(slot, tail, num_output)

    def resync(self, slot: int, tail: Sequence[int], num_output: int) -> None:
        """Place ``slot`` from its committed history (entry, resumption, or several new tokens)."""
        self.pos[slot] = span_position(tail, self.layout) if self.mode[slot] != TEXT_ONLY else -1
        self.num_output[slot] = num_output

    def remove(self, slot: int) -> None:
        self.mode[slot], self.pos[slot] = TEXT_ONLY, -1

    def move(self, src: int, dst: int, swap: bool) -> None:
        """``dst`` takes ``src``'s state; with ``swap`` the two exchange."""
        for a in (self.mode, self.pos, self.num_output, self.temperature, self.top_k, self.top_p, self.seed):
            a[[dst, src]] = a[[src, dst]] if swap else a[[src, src]]
        if not swap:
            self.remove(src)

    def tracked(self, slots: np.ndarray) -> np.ndarray:
        """Those of ``slots`` whose state follows their tokens (text-only rows never change)."""
        return slots[self.mode[slots] != TEXT_ONLY]

    def advance(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Account one newly committed token per slot."""
        if not len(slots):
            return
        lay, pos = self.layout, self.pos[slots]
        is_code = self._is_code[np.clip(tokens, 0, len(self._is_code) - 1)] & (tokens >= 0)
        self.pos[slots] = np.where(tokens == lay.boi, 0, np.where(is_code & (pos >= 0), pos + 1, -1))
        self.num_output[slots] += 1

    def apply(self, logits: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
        """Mask row ``i`` of ``logits`` for the request in ``slots[i]``; sample rows inside spans."""
        mode, pos = self.mode[slots], self.pos[slots]
        in_span = pos >= 0
        force_boi = ~in_span & (mode == IMAGE_ONLY) & (self.num_output[slots] == 0)
        text = ~(in_span | force_boi)
        if text.all() and not (mode == INTERLEAVED).any():  # the common text-only batch
            logits.index_fill_(1, self._no_text_boi, float("-inf"))
            return logits
        forced = np.flatnonzero(~text)
        tokens = torch.from_numpy(np.where(pos[forced] >= self.n, self.layout.eoi, self.layout.boi)).to(
            self.device)
        sample = in_span[forced] & (pos[forced] < self.n)
        if sample.any():
            tokens[torch.from_numpy(np.flatnonzero(sample)).to(self.device)] = self._sample_codes(
                logits, forced[sample], slots[forced[sample]])
        rows_text = torch.from_numpy(np.flatnonzero(text)).to(self.device)
        logits[rows_text.unsqueeze(1), self._no_text.unsqueeze(0)] = float("-inf")
        rows_no_boi = torch.from_numpy(np.flatnonzero(text & (mode != INTERLEAVED))).to(self.device)
        logits[rows_no_boi, self.layout.boi] = float("-inf")
        rows_forced = torch.from_numpy(forced).to(self.device)
        logits[rows_forced] = float("-inf")
        logits[rows_forced, tokens] = 0.0
        return logits

    def _sample_codes(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray) -> torch.Tensor:
        """Vocabulary ids of one image code per row, under each slot's image sampling settings."""
        x = logits[torch.from_numpy(rows).to(self.device).unsqueeze(1), self._code_ids]  # [r, codes]
        x = torch.nan_to_num(x, nan=-1e30, neginf=-1e30)  # a fully masked row samples uniformly, not NaN
        temp = self.temperature[slots]
        choice = x.argmax(dim=1)
        hot = np.flatnonzero(temp > 0)
        if len(hot):
            hot_t = torch.from_numpy(hot).to(self.device)
            choice[hot_t] = self._sample_hot(x[hot_t], slots[hot])
        return self._code_ids[choice]

    def _sample_hot(self, x: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
        """Temperature, then top-k and top-p in sorted order, then one draw per row."""
        dev, width = self.device, x.shape[1]
        x = x / torch.from_numpy(self.temperature[slots]).to(dev).unsqueeze(1)
        top_k, top_p = self.top_k[slots], self.top_p[slots]
        order = None
        if (top_k > 0).any() or (top_p < 1).any():
            x, order = x.sort(dim=1, descending=True)
            k = torch.from_numpy(np.where((top_k > 0) & (top_k < width), top_k, width)).to(dev)
            x = x.masked_fill(torch.arange(width, device=dev).unsqueeze(0) >= k.unsqueeze(1), float("-inf"))
        probs = x.softmax(dim=1)
        if order is not None:
            p = torch.from_numpy(np.where(top_p < 1, top_p, np.inf).astype(np.float32)).to(dev).unsqueeze(1)
            probs = probs.masked_fill(probs.cumsum(dim=1) - probs >= p, 0.0)  # keeps at least the top one
        picked = torch.empty(len(slots), dtype=torch.long, device=dev)
        seeds = self.seed[slots]
        free = np.flatnonzero(seeds < 0)
        if len(free):
            idx = torch.from_numpy(free).to(dev)
            picked[idx] = torch.multinomial(probs[idx], 1).squeeze(1)
        for i in np.flatnonzero(seeds >= 0):  # Python work only for seeded rows inside a span
            if self._gen is None:
                self._gen = torch.Generator(device=dev)
            self._gen.manual_seed(_draw_seed(int(seeds[i]), int(self.num_output[slots[i]])))
            picked[i] = torch.multinomial(probs[i], 1, generator=self._gen)[0]
        return picked if order is None else order.gather(1, picked.unsqueeze(1)).squeeze(1)


def logits_processor_for_runner(vllm_config: Any = None) -> type:
    """The adapter class for the runner vLLM will use: V2 needs Triton; VLLM_USE_V2_MODEL_RUNNER overrides.

    With ``vllm_config`` the answer is vLLM's own (``use_v2_model_runner``, which also falls back to V1
    for features V2 lacks); without it, the env override, else Triton's presence, as vLLM decides by default.
    """
    if vllm_config is not None:
        use_v2 = vllm_config.use_v2_model_runner
    else:
        from vllm import envs
        from vllm.triton_utils import HAS_TRITON

        use_v2 = envs.VLLM_USE_V2_MODEL_RUNNER if envs.VLLM_USE_V2_MODEL_RUNNER is not None else HAS_TRITON
    if use_v2:
        from engine.logits_v2 import ChameleonSpanLogitsProcessorV2

        return ChameleonSpanLogitsProcessorV2
    from engine.logits_v1 import ChameleonSpanLogitsProcessorV1

    return ChameleonSpanLogitsProcessorV1
