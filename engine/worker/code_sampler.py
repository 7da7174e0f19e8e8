"""The image-code sampler: one code per row from its logits over the codebook, under the request's image
temperature, top-k and top-p, drawn with uniforms that are a function of (request seed, output index, round).

Counter-based rather than a stateful generator, so a seeded request draws the same codes whatever its batch and
across preemption, on every tensor-parallel rank. Every row of a call is drawn as batched tensor work; the
top-p draw itself is ``engine/worker/nucleus.py``'s (compiled loops on a CPU, tensor passes elsewhere).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from engine.shared.vocab import TokenLayout
from engine.worker.slot_state import SlotTable
from engine.worker.transfers import to_device

_MASK63 = (1 << 63) - 1

# splitmix64's constants as int64 (two's complement): the same code then runs on numpy arrays and torch tensors
_SPLITMIX = tuple(c - (1 << 64) if c >> 63 else c for c in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03,
                                                            0x8CB92BA72F3D8DD7, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))

Ints = TypeVar("Ints", np.ndarray, torch.Tensor)


def _splitmix_bits(seeds: Ints, steps: Ints, attempts: Ints) -> Ints:
    """53 random bits (int64) per (request seed, output index, attempt) by splitmix64, broadcast together: int64
    numpy arrays or tensors, or host arrays in numba (:func:`_host_bits`). int64 arithmetic wraps, as splitmix64
    wants; ``>>`` on int64 copies the sign bit, so each shift is masked to a logical one."""
    a, b, c, m1, m2 = _SPLITMIX
    z = seeds * a + steps * b + attempts * c
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * m1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * m2
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return (z >> 11) & ((1 << 53) - 1)


def counter_uniforms(seeds: Ints, steps: Ints, attempts: Ints) -> Ints:
    """Uniforms in [0, 1) (float64) from (request seed, output index, attempt) by splitmix64, broadcast
    together; int64 numpy arrays on the host, or int64 tensors on any device, with equal results."""
    bits = _splitmix_bits(seeds, steps, attempts)
    return (bits.double() if isinstance(bits, torch.Tensor) else bits.astype(np.float64)) * 2.0**-53


@functools.cache
def _host_bits() -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """:func:`_splitmix_bits` compiled for host arrays: one call where numpy takes a dozen passes. numba is
    imported here, not with this module (see :class:`CodeSampler`)."""
    from engine.worker.nucleus import compiled

    return compiled()(_splitmix_bits)


def tempered_top_k(x: torch.Tensor, temperature: np.ndarray, top_k: np.ndarray) -> torch.Tensor:
    """Code logits ``x`` (rows x codebook; not written to) over each row's ``temperature`` (> 0), then cut to
    its ``top_k`` (0 or the codebook's width: off; ties at the k-th stay) with -inf."""
    device, width = x.device, x.shape[1]
    x = x / to_device(temperature, device).unsqueeze(1)
    k_on = (top_k > 0) & (top_k < width)
    if k_on.any():
        k_max = int(top_k[k_on].max())
        kth = x.topk(k_max, dim=1).values.gather(1, to_device(np.where(k_on, top_k, k_max) - 1, device).unsqueeze(1))
        x = x.masked_fill((x < kth) & to_device(k_on, device).unsqueeze(1), float("-inf"))
    return x


def request_seed(seed: int | None) -> int:
    """The seed of a request's image draws: its own, else one drawn from numpy's global generator.

    The server draws a seed at admission for every request that may write images
    (``server/sampling.py``), so the fallback serves only requests made to the engine directly. It
    agrees across tensor-parallel ranks as vLLM's own Model Runner V2 sampler does for unseeded
    requests: vLLM seeds every worker's numpy alike and adds requests in the same order.
    """
    return (int(np.random.randint(0, _MASK63, dtype=np.int64)) if seed is None else seed) & _MASK63


class CodeSampler:
    """Draws image codes for rows of a logits tensor, with each slot's settings (``temperature``, ``top_k``,
    ``top_p``, ``seed`` of a :class:`SlotTable`)."""

    MAX_ATTEMPTS = 16  # top-p rejection rounds before the sorted fallback (engine/worker/nucleus.py)

    def __init__(self, layout: TokenLayout, state: SlotTable, device: torch.device) -> None:
        self.state, self.device = state, device
        self._code_ids = layout.code_ids().to(device)
        lo = layout.code_to_id[0]
        contiguous = layout.code_to_id == tuple(range(lo, lo + layout.codebook_size))
        # Chameleon's codes are one id block: slicing it is far cheaper than gathering
        self.code_cols: slice | torch.Tensor = slice(lo, lo + layout.codebook_size) if contiguous \
            else self._code_ids
        # Imported here, not with this module: once numba's llvmlite is imported, the scan of module namespaces
        # that vLLM's CPU platform runs as its worker starts fails on it (vLLM 0.32); processors are built after.
        from engine.worker.nucleus import draw_nucleus

        self._draw_nucleus = draw_nucleus
        self._host_bits, self._attempts = _host_bits(), np.arange(self.MAX_ATTEMPTS + 1)
        half = torch.full((1, self.MAX_ATTEMPTS + 1), 0.5, device=device)
        draw_nucleus(half[:, :2].clone(), half, state.top_p[:1])  # compiles (or loads numba's cache) now
        self._uniforms(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))

    def draw(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray,
             num_output: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of one image code per row of ``rows`` (ascending), for the requests in ``slots`` with
        ``num_output`` output tokens so far (where the caller knows them: on the host, or on the device).
        ``logits`` are read, not written."""
        if isinstance(self.code_cols, slice):  # all rows: the whole batch, a view
            x = logits[:, self.code_cols]
            if len(rows) < logits.shape[0]:  # a row copy: a tensor index beside a slice costs 4x as much
                x = x.index_select(0, self._to_device(rows))
        else:
            x = logits[self._to_device(rows).unsqueeze(1), self.code_cols]
        hot = self.state.temperature[slots] > 0
        if not hot.any():  # image_temperature 0: greedy
            return self._code_ids[x.argmax(dim=1)]
        uniforms = self._uniforms(slots, num_output)
        if hot.all():
            return self._code_ids[self._sample_hot(x, slots, uniforms)]
        choice = x.argmax(dim=1)
        hot_t = self._to_device(np.flatnonzero(hot))
        choice.index_copy_(0, hot_t, self._sample_hot(x.index_select(0, hot_t), slots[hot], uniforms[hot_t]))
        return self._code_ids[choice]

    def _sample_hot(self, x: torch.Tensor, slots: np.ndarray, uniforms: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, then top-p with the rows' ``uniforms``. ``x`` is not written to."""
        state = self.state
        x = tempered_top_k(x, state.temperature[slots], state.top_k[slots])
        return self._draw_nucleus(x.softmax(dim=1), uniforms, state.top_p[slots])

    def _uniforms(self, slots: np.ndarray, num_output: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Uniforms per row, one per rejection round and one for the sorted fallback (float32), computed where
        ``num_output`` is: on the host a dozen numpy passes cost a CPU step less than as many dispatches."""
        if isinstance(num_output, np.ndarray):  # counter_uniforms, compiled
            bits = self._host_bits(self.state.seed[slots, None], num_output[:, None], self._attempts)
            return self._to_device((bits * 2.0**-53).astype(np.float32))
        attempts = torch.arange(self.MAX_ATTEMPTS + 1, device=self.device)
        seeds = self._to_device(self.state.seed[slots])
        return counter_uniforms(seeds[:, None], num_output[:, None], attempts).float()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)
