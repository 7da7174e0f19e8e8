"""Top-p sampling of image codes by rejection, as tensor passes (accelerators) or compiled loops (CPUs).

Draw by inverse CDF from the (top-k) distribution and keep the draw when the mass of strictly likelier
codes is below top-p: that samples the nucleus exactly, each round accepting with probability >= top-p;
rows that miss every round draw from a sorted nucleus. On an accelerator every round of every row is
drawn at once, from rows sorted once, so that no step waits on the device to learn which rows are done.
On a CPU the tensor form costs a dozen passes and dispatches per round over rows of the codebook, so there
the same draw runs as numba loops (numba is already a vLLM dependency), one call per engine step: per
row, one vectorized pass for block sums, a walk over blocks then within one block per round, one
vectorized pass for the mass above the draw, and no sort unless every round misses. The two forms sum in
different orders, so they pick the same code from the same uniforms up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch

from engine.worker.transfers import to_device

_BLOCK = 64  # codes per block sum: the inverse-CDF walk visits width / 64 sums, then at most one block


def compiled(**flags: bool) -> Callable[[Callable], Callable]:
    """``numba.njit``, cached on disk where numba finds a writable place (the package's ``__pycache__`` or the
    user's cache directory). Where it finds none, as on a read-only filesystem, numba refuses ``cache=True``;
    the function then compiles in each process instead, and the engine still starts."""
    def wrap(fn: Callable) -> Callable:
        try:
            return numba.njit(cache=True, nogil=True, **flags)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **flags)(fn)
    return wrap


@compiled(fastmath=True)
def _block_sums(p: np.ndarray, out: np.ndarray) -> float:
    """``out[b]``: the sum of ``p``'s block b; returns the total. Full blocks are a loop of constant length,
    which the compiler vectorizes (about twice as fast as a bound that varies), then the partial last block."""
    total, full = 0.0, p.shape[0] // _BLOCK
    for b in range(full):
        acc, start = 0.0, b * _BLOCK
        for j in range(_BLOCK):
            acc += p[start + j]
        out[b] = acc
        total += acc
    if full < out.shape[0]:
        acc = 0.0
        for j in range(full * _BLOCK, p.shape[0]):
            acc += p[j]
        out[full] = acc
        total += acc
    return total


@compiled()
def _inverse_cdf(p: np.ndarray, blocks: np.ndarray, target: float) -> int:
    """The first index where the running sum of ``p`` exceeds ``target``, else the last index."""
    acc, start = 0.0, 0
    for b in range(blocks.shape[0]):
        if acc + blocks[b] > target:
            break
        acc += blocks[b]
        start += _BLOCK
    for j in range(min(start, p.shape[0]), p.shape[0]):  # past the block only where rounding disagrees
        acc += p[j]
        if acc > target:
            return j
    return p.shape[0] - 1


@compiled(fastmath=True)
def _mass_above(p: np.ndarray, level: float) -> float:
    """The sum of the entries of ``p`` greater than ``level``."""
    above = 0.0
    for j in range(p.shape[0]):
        above += p[j] if p[j] > level else 0.0
    return above


def draw_nucleus(probs: torch.Tensor, uniforms: torch.Tensor, top_p: np.ndarray) -> torch.Tensor:
    """One index per row of ``probs`` (float32 softmax rows; one with NaNs, from a row without a finite
    logit, draws uniformly) under that row's ``top_p``.

    ``uniforms[r, a]`` is row r's uniform for round a; the last column draws from the sorted nucleus of
    rows that missed every round. ``probs`` may be written to.
    """
    if probs.device.type == "cpu":
        return torch.from_numpy(_draw_host(probs.numpy(), uniforms.numpy(), top_p))
    return _draw_tensor(probs, uniforms, top_p)


def _draw_tensor(probs: torch.Tensor, uniforms: torch.Tensor, top_p: np.ndarray) -> torch.Tensor:
    """Every round of every row at once, as tensor passes, with no device->host read: on an accelerator a step
    never waits for its draw. Each row keeps its first accepted round, else its sorted-nucleus draw.

    The mass of strictly likelier codes comes from the row sorted once (which the sorted nucleus needs anyway):
    the codes likelier than a draw are a prefix of the descending order, found by a binary search.
    """
    dev, width = probs.device, probs.shape[1]
    cdf = probs.cumsum(dim=1)
    broken = ~(cdf[:, -1:] > 0)  # softmax of a row of -inf, or with a NaN or +inf, is all NaN
    probs = torch.where(broken, 1.0 / width, probs)
    cdf = torch.where(broken, torch.arange(1, width + 1, device=dev, dtype=cdf.dtype) / width, cdf)
    total = cdf[:, -1:]
    desc, order = probs.sort(dim=1, descending=True, stable=True)
    mass = desc.cumsum(dim=1)
    top_p_t = to_device(top_p, dev).unsqueeze(1)
    limit = top_p_t * total
    kept = desc.masked_fill(mass - desc >= limit, 0.0)  # the sorted nucleus: the top code always stays
    kept_cdf = kept.cumsum(dim=1)
    last = uniforms[:, -1:] * kept_cdf[:, -1:]
    picked = order.gather(1, torch.searchsorted(kept_cdf, last, right=True).clamp_(max=width - 1)).squeeze(1)
    rounds = uniforms.shape[1] - 1
    if not rounds:
        return picked
    draws = torch.searchsorted(cdf, uniforms[:, :rounds].contiguous() * total, right=True).clamp_(max=width - 1)
    p_draw = probs.gather(1, draws)
    likelier = width - torch.searchsorted(desc.flip(1), p_draw, right=True)  # codes with p > p_draw
    above = torch.where(likelier > 0, mass.gather(1, (likelier - 1).clamp_(min=0)), 0.0)
    ok = (p_draw > 0) & ((top_p_t >= 1) | (above < limit))  # top-p 1: no nucleus, any drawn code
    first = draws.gather(1, ok.int().argmax(dim=1, keepdim=True)).squeeze(1)  # argmax: the first accepted round
    return torch.where(ok.any(dim=1), first, picked)


@compiled()
def _draw_host(probs: np.ndarray, uniforms: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """:func:`draw_nucleus` as loops over each row."""
    rows, width = probs.shape
    rounds = uniforms.shape[1] - 1
    blocks = np.empty((width + _BLOCK - 1) // _BLOCK, dtype=np.float64)
    out = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        p = probs[r]
        total = _block_sums(p, blocks)
        if not total > 0:  # softmax of all -inf, or with a NaN or +inf
            out[r] = min(int(uniforms[r, 0] * width), width - 1)
            continue
        found = False
        for a in range(rounds):
            pick = _inverse_cdf(p, blocks, uniforms[r, a] * total)
            if p[pick] > 0 and (top_p[r] >= 1 or _mass_above(p, p[pick]) < top_p[r] * total):
                out[r], found = pick, True
                break
        if not found:
            order = np.argsort(-p, kind="mergesort")
            kept = np.zeros(width, dtype=np.float32)
            before = 0.0
            for i in range(width):  # the smallest prefix reaching top-p; the top code always stays
                if before >= top_p[r] * total:
                    break
                kept[i] = p[order[i]]
                before += kept[i]
            _block_sums(kept, blocks)
            out[r] = order[_inverse_cdf(kept, blocks, uniforms[r, rounds] * before)]
    return out


_BUCKET_SHIFT = 19  # a non-negative float32's bits >> 19 order it: its exponent and 4 mantissa bits, 4,096 buckets


@compiled()
def nucleus_host(probs: np.ndarray, top_p: np.ndarray) -> None:
    """Each row of ``probs`` (float32, non-negative) cut to its nucleus under ``top_p`` and renormalized, in place:
    a code stays where the mass of strictly likelier codes is below top-p (as :func:`draw_nucleus` draws). In
    O(width) a row, not a sort: masses by bucket of the float's leading bits (which order non-negative floats)
    find the bucket the nucleus ends in, and only that bucket's values are sorted."""
    rows, width = probs.shape
    buckets = np.empty(1 << (31 - _BUCKET_SHIFT), dtype=np.float64)
    for r in range(rows):
        if top_p[r] >= 1:
            continue
        p = probs[r]
        bits = p.view(np.int32) >> _BUCKET_SHIFT
        buckets[:] = 0.0
        total = 0.0
        for j in range(width):
            buckets[bits[j]] += p[j]
            total += p[j]
        limit, above, edge = top_p[r] * total, 0.0, -1
        for b in range(len(buckets) - 1, -1, -1):  # the bucket where the mass from the top reaches top-p
            if above + buckets[b] >= limit:
                edge = b
                break
            above += buckets[b]
        if edge < 0:
            continue
        values = np.sort(p[bits == edge])[::-1]
        floor, before, i = values[0], above, 0
        while i < len(values):  # groups of equal values: in while the mass strictly above them is below top-p
            if before >= limit:
                break
            floor = values[i]
            k = i
            while k < len(values) and values[k] == values[i]:
                before += values[k]
                k += 1
            i = k
        kept = 0.0
        for j in range(width):
            if p[j] < floor:
                p[j] = 0.0
            kept += p[j]
        for j in range(width):
            p[j] = p[j] / kept
