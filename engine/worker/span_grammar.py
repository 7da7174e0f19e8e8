"""The image-span grammar and image sampling, once, as batched tensor work over per-slot state.

Outside a span image codes and EOI are forbidden (BOI too unless the request
may write images); after BOI the checkpoint family's span (``engine/shared/span_format.py``):
Chameleon's ``image_seq_length`` codes then EOI, or a row-framed span's size prefix (Lumina-mGPT's size
tokens, Emu3's ``H*W`` text), EOL-closed rows of the request's grid and a trailer then EOI, every forced
step chosen per row by array arithmetic on its position. Rows
inside a span are sampled here with the request's image temperature/top-k/top-p
(the checkpoint family's defaults unless the request sets them), because vLLM's own temperature and
top-k/top-p run after logits processors; the row is left with that one token
finite, so whatever vLLM does next picks it. No vLLM imports here: the V1 and
V2 adapters (``runner_v1.py``, ``runner_v2.py``) feed it slots and tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, TEXT_ONLY, RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.transfers import to_device

_MASK63 = (1 << 63) - 1


def span_position(tail: Sequence[int], layout: TokenLayout, prefix: Sequence[int] = ()) -> int:
    """Tokens written since an unclosed BOI in ``tail``, or -1 outside a span: after the BOI come the span's
    size ``prefix`` (the grid's: its tokens may be text by id, as Emu3's digits are) and then span tokens.

    ``tail`` needs only the span's length + 1 last tokens of the history.
    """
    tail = list(tail)
    if layout.boi not in tail:
        return -1
    after = tail[len(tail) - tail[::-1].index(layout.boi):]
    n = min(len(after), len(prefix))
    if after[:n] != list(prefix[:n]) or any(t == layout.eoi or not layout.is_span_token(t) for t in after[n:]):
        return -1
    return len(after)


# splitmix64's constants as int64 (two's complement): the same code then runs on numpy arrays and torch tensors
_SPLITMIX = tuple(c - (1 << 64) if c >> 63 else c for c in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03,
                                                            0x8CB92BA72F3D8DD7, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))

Ints = TypeVar("Ints", np.ndarray, torch.Tensor)


def _shift_right(z: Ints, bits: int) -> Ints:
    """A logical right shift of int64 values (``>>`` on int64 copies the sign bit)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def counter_uniforms(seeds: Ints, steps: Ints, attempts: Ints) -> Ints:
    """Uniforms in [0, 1) (float64) from (request seed, output index, attempt) by splitmix64, broadcast
    together; int64 numpy arrays on the host, or int64 tensors on any device, with equal results.

    Counter-based rather than a stateful generator, so a seeded request draws the same codes whatever its
    batch and across preemption, on every tensor-parallel rank. int64 arithmetic wraps, as splitmix64 wants.
    """
    a, b, c, m1, m2 = _SPLITMIX
    z = seeds * a + steps * b + attempts * c
    z = (z ^ _shift_right(z, 30)) * m1
    z = (z ^ _shift_right(z, 27)) * m2
    bits = _shift_right(z ^ _shift_right(z, 31), 11)  # 53 random bits
    return (bits.double() if isinstance(bits, torch.Tensor) else bits.astype(np.float64)) * 2.0**-53


class SpanGrammar:
    """Per-slot span state (host numpy) and the batched masking/sampling of one logits tensor."""

    MAX_ATTEMPTS = 16  # top-p rejection rounds before the sorted fallback (engine/worker/nucleus.py)
    MAX_PREFIX = 16  # tokens of a size prefix: Emu3's "9999*9999" and its opening token fit

    def __init__(self, layout: TokenLayout, max_slots: int, device: torch.device | str = "cpu") -> None:
        self.layout, self.format = layout, layout.span
        self.device = torch.device(device)
        codes = layout.code_ids()
        self._code_ids = codes.to(self.device)
        lo = layout.code_to_id[0]
        contiguous = layout.code_to_id == tuple(range(lo, lo + layout.codebook_size))
        # Chameleon's codes are one id block: slicing it is far cheaper than gathering
        self._code_cols: slice | torch.Tensor = slice(lo, lo + layout.codebook_size) if contiguous \
            else self._code_ids
        inner = self.format.inner_ids()
        self._inner_cols = torch.tensor(inner, dtype=torch.long, device=self.device)
        self._is_inner = np.zeros(max(layout.vocab_size, int(codes.max()) + 1, *(t + 1 for t in inner)), dtype=bool)
        self._is_inner[codes.numpy()] = True
        self._is_inner[inner] = True
        self._is_inner_t = torch.from_numpy(self._is_inner).to(self.device)
        self._tail_ids = np.asarray([*self.format.trailer, layout.eoi], dtype=np.int64)  # after the last row
        self._tail_ids_t = torch.from_numpy(self._tail_ids).to(self.device)
        self.mode = np.zeros(max_slots, dtype=np.int8)
        self.pos = np.full(max_slots, -1, dtype=np.int64)  # tokens since BOI; -1 outside a span
        native = self.format.native_grid
        self.rows = np.full(max_slots, native, dtype=np.int64)  # the grid this slot's images are written in
        self.cols = np.full(max_slots, native, dtype=np.int64)
        self.prefix = np.full((max_slots, self.MAX_PREFIX), -1, dtype=np.int64)  # the grid's size prefix
        self.prefix_len = np.zeros(max_slots, dtype=np.int64)
        self._prefix_t = torch.from_numpy(self.prefix).to(self.device)
        self.num_output = np.zeros(max_slots, dtype=np.int64)  # output tokens accounted for
        self.temperature = np.zeros(max_slots, dtype=np.float32)
        self.top_k = np.zeros(max_slots, dtype=np.int64)
        self.top_p = np.ones(max_slots, dtype=np.float32)
        self.seed = np.zeros(max_slots, dtype=np.int64)  # every image draw is counter-based on this seed
        # Masked edits: per slot, the token written at each code cell of its image (the input's code outside the
        # mask), -1 where one is sampled; rows of slots without a mask are never read. As wide as the largest
        # edit's grid so far (Emu3 edits at each input image's own grid).
        self.has_kept = np.zeros(max_slots, dtype=bool)
        self.kept = np.full((max_slots, native * native), -1, dtype=np.int64)
        self._kept_t = torch.from_numpy(self.kept).to(self.device)
        # Imported here, not with this module: once numba's llvmlite is imported, the scan of module namespaces
        # that vLLM's CPU platform runs as its worker starts fails on it (vLLM 0.32); processors are built after.
        from engine.worker.nucleus import draw_nucleus

        self._draw_nucleus = draw_nucleus
        half = torch.full((1, self.MAX_ATTEMPTS + 1), 0.5, device=self.device)
        draw_nucleus(half[:, :2].clone(), half, self.top_p[:1])  # compiles (or loads numba's cache) now, not in a step

    def tail_length(self, slot: int) -> int:
        """History tokens :meth:`resync` needs to place ``slot`` (its span's length + 1)."""
        return self.format.span_length((int(self.rows[slot]), int(self.cols[slot]))) + 1

    def add(self, slot: int, params: RequestOptions, tail: Sequence[int] = (), num_output: int = 0) -> None:
        """(Re)initialise ``slot`` for a request whose history ends with ``tail`` (``()``: place it later with
        :meth:`resync`, which needs :meth:`tail_length` tokens, known once the grid is set here).

        A grid the checkpoint cannot write (the server refuses those with a 400) falls back to the native one.
        """
        grid = params.image_grid or (self.format.native_grid, self.format.native_grid)
        try:
            self.format.check_grid(grid)
        except ValueError:
            grid = (self.format.native_grid, self.format.native_grid)
        self.rows[slot], self.cols[slot] = grid
        if self.format.rows_framed:  # square spans have no prefix: nothing to copy to the device
            prefix = self.format.prefix(grid)[:self.MAX_PREFIX]
            self.prefix[slot] = -1
            self.prefix[slot, :len(prefix)] = prefix
            self.prefix_len[slot] = len(prefix)
            self._prefix_t[slot] = to_device(self.prefix[slot], self.device)
        self.mode[slot] = params.mode
        self.temperature[slot] = params.image_temperature
        self.top_k[slot] = params.image_top_k
        self.top_p[slot] = params.image_top_p
        self.seed[slot] = _request_seed(params.seed) if params.mode != TEXT_ONLY else 0
        self._set_kept(slot, params.kept_codes if len(params.kept_codes) == grid[0] * grid[1] else ())
        self.resync(slot, tail, num_output)

    def _set_kept(self, slot: int, kept: Sequence[int]) -> None:
        """A masked edit's cells (``RequestOptions.kept_codes``, one per cell of the slot's grid; ``()``: no mask);
        ids that are not image codes are sampled. A grid wider than the table widens it: a reallocation when a
        request is added, never in a step."""
        self.has_kept[slot] = bool(kept)
        if not kept:
            return
        if len(kept) > self.kept.shape[1]:
            wider = np.full((len(self.kept), len(kept)), -1, dtype=np.int64)
            wider[:, :self.kept.shape[1]] = self.kept
            self.kept, self._kept_t = wider, torch.from_numpy(wider).to(self.device)
        row = np.asarray(kept, dtype=np.int64)
        self.kept[slot] = -1
        self.kept[slot, :len(row)] = np.where(np.isin(row, self.layout.code_to_id), row, -1)
        self._kept_t[slot] = to_device(self.kept[slot], self.device)

    def resync(self, slot: int, tail: Sequence[int], num_output: int) -> None:
        """Place ``slot`` from its committed history (entry, resumption, or several new tokens)."""
        prefix = self.prefix[slot, :self.prefix_len[slot]].tolist()
        self.pos[slot] = span_position(tail, self.layout, prefix) if self.mode[slot] != TEXT_ONLY else -1
        self.num_output[slot] = num_output

    def remove(self, slot: int) -> None:
        self.mode[slot], self.pos[slot] = TEXT_ONLY, -1

    def move(self, src: int, dst: int, swap: bool) -> None:
        """``dst`` takes ``src``'s state; with ``swap`` the two exchange."""
        for a in (self.mode, self.pos, self.rows, self.cols, self.prefix, self.prefix_len, self.num_output,
                  self.temperature, self.top_k, self.top_p, self.seed, self.has_kept, self.kept):
            a[[dst, src]] = a[[src, dst]] if swap else a[[src, src]]
        if self.format.rows_framed:
            self._prefix_t[[src, dst]] = to_device(self.prefix[[src, dst]], self.device)
        if self.has_kept[[src, dst]].any():
            self._kept_t[[src, dst]] = to_device(self.kept[[src, dst]], self.device)
        if not swap:
            self.remove(src)

    def sampling_code(self, slots: np.ndarray) -> np.ndarray:
        """Per slot of ``slots``: whether this step samples one of its image codes."""
        pos = self.pos[slots]
        return (pos >= 0) & (self._span_step(pos, self.rows[slots], self.cols[slots], slots) < 0)

    def _span_step(self, pos: Ints, rows: Ints, cols: Ints, slots: np.ndarray) -> Ints:
        """Per row inside a span (``pos`` tokens since its BOI, images of ``rows`` x ``cols`` codes, the request
        in ``slots``): the token its grammar forces next (a masked edit's kept code among them), or -1 where it
        samples a code. Host arrays, or tensors on the device."""
        host = isinstance(pos, np.ndarray)
        where = np.where if host else torch.where
        eoi = self.layout.eoi
        if not self.format.rows_framed:  # BOI, rows * cols codes, EOI
            return self._kept_code(where(pos >= rows * cols, eoi, -1), pos, slots)
        # BOI, the grid's size prefix, rows x (cols codes + EOL), the trailer, EOI
        if host:
            plen, tail_ids = self.prefix_len[slots], self._tail_ids
            prefix = self.prefix[slots, np.clip(pos, 0, self.MAX_PREFIX - 1)]
        else:
            plen, tail_ids = self._to_device(self.prefix_len[slots]), self._tail_ids_t
            prefix = self._prefix_t[self._to_device(slots), pos.clamp(0, self.MAX_PREFIX - 1)]
        q = pos - plen
        step = where((q + 1) % (cols + 1) == 0, self.format.eol, -1)
        after = q - rows * (cols + 1)
        last = len(self._tail_ids) - 1
        step = where(after >= 0, tail_ids[np.clip(after, 0, last) if host else after.clamp(0, last)], step)
        step = where(pos < plen, prefix, step)
        return self._kept_code(step, q // (cols + 1) * cols + q % (cols + 1), slots)

    def _kept_code(self, step: Ints, cell: Ints, slots: np.ndarray) -> Ints:
        """``step`` with a masked edit's kept code at the cells where it would sample (``cell``: the code cell
        each row is at); unchanged, and no work, for a batch without masked edits."""
        masked = self.has_kept[slots]
        if not masked.any():
            return step
        last = self.kept.shape[1] - 1
        if isinstance(step, np.ndarray):
            kept = np.where(masked, self.kept[slots, np.clip(cell, 0, last)], -1)
            return np.where(step < 0, kept, step)
        kept = self._kept_t[self._to_device(slots), cell.clamp(0, last)]
        return torch.where((step < 0) & self._to_device(masked), kept, step)

    def is_span_inner(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per token id on the device: whether it is a code or another token inside a span (not BOI or EOI)."""
        return self._is_inner_t[tokens.clamp(0, len(self._is_inner_t) - 1)] & (tokens >= 0)

    def tracked(self, slots: np.ndarray) -> np.ndarray:
        """Those of ``slots`` whose state follows their tokens (text-only rows never change)."""
        return slots[self.mode[slots] != TEXT_ONLY]

    def advance(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Account one newly committed token per slot."""
        if not len(slots):
            return
        lay, pos = self.layout, self.pos[slots]
        inner = self._is_inner[np.clip(tokens, 0, len(self._is_inner) - 1)] & (tokens >= 0)
        inner |= pos < self.prefix_len[slots]  # a size prefix's tokens may be text by id
        self.pos[slots] = np.where(tokens == lay.boi, 0, np.where(inner & (pos >= 0), pos + 1, -1))
        self.num_output[slots] += 1

    def apply(self, logits: torch.Tensor, slots: np.ndarray, code_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Mask row ``i`` of ``logits`` for the request in ``slots[i]``; sample rows inside spans, from
        ``code_logits`` where given (rows as ``logits``; Model Runner V2's logits before its penalties).

        Runs once per engine step over the whole batch: every tensor operation here is a pass over rows of
        the vocabulary, so masks that would touch no row are skipped, and a batch of forced rows only is
        filled whole. A forced token that an earlier stage set to -inf stays -inf: nothing is re-allowed.
        """
        mode, pos = self.mode[slots], self.pos[slots]
        in_span = pos >= 0
        force_boi = ~in_span & (mode == IMAGE_ONLY) & (self.num_output[slots] == 0)
        text = ~(in_span | force_boi)
        forced = np.flatnonzero(~text)  # rows left with one finite token: BOI, a code, or EOI
        if len(forced):
            placed = slots[forced]
            step = np.where(in_span[forced], self._span_step(pos[forced], self.rows[placed], self.cols[placed], placed),
                            self.layout.boi)
            tokens = self._to_device(step)
            all_rows = len(forced) == len(slots)
            rows_forced = slice(None) if all_rows else self._to_device(forced)
            sample = np.flatnonzero(step < 0)
            # 0.0 for the one token each forced row keeps; read (before the masks below) where the grammar forces
            # a token that an earlier stage may have forbidden: BOI, EOI, Lumina-mGPT's EOL and size tokens
            kept: torch.Tensor | float = 0.0
            if len(sample) < len(forced):
                clamped = tokens.clamp(min=0)  # a sampled row's -1, read for nothing and set to 0.0 below
                read = logits.gather(1, clamped.unsqueeze(1)).squeeze(1) if all_rows else logits[rows_forced, clamped]
                kept = _zero_unless_forbidden(read)
            if len(sample):
                source = logits if code_logits is None else code_logits
                sample_t = self._to_device(sample)
                sampled = slots[forced[sample]]
                tokens[sample_t] = self._sample_codes(source, forced[sample], sampled, self.num_output[sampled])
                if isinstance(kept, torch.Tensor):
                    kept.index_fill_(0, sample_t, 0.0)
        if len(forced) < len(slots):
            # Every row, by column slices: forced rows are overwritten below and their codes were read above,
            # and a slice fill is several times cheaper than indexing the text rows.
            self._forbid_span_tokens(logits)
        no_boi = text & (mode != INTERLEAVED)
        if no_boi.all():
            logits[:, self.layout.boi] = float("-inf")
        elif no_boi.any():
            self._forbid_boi(logits, np.flatnonzero(no_boi))
        if len(forced) == len(slots) > 0:
            kept_rows = kept.unsqueeze(1) if isinstance(kept, torch.Tensor) else kept
            logits.fill_(float("-inf")).scatter_(1, tokens.unsqueeze(1), kept_rows)
        elif len(forced):
            logits.index_fill_(0, rows_forced, float("-inf"))
            logits.index_put_((rows_forced, tokens), kept if isinstance(kept, torch.Tensor) else logits.new_zeros(()))
        return logits

    def positions_on_device(self, slots: np.ndarray, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """:func:`span_position` on the device, per slot of ``slots``, from the last :meth:`tail_length` (or
        more) tokens of its history: ``tokens`` (slots x window, oldest first) at positions ``at`` (< 0: before
        the history began)."""
        width = tokens.shape[1]
        column = torch.arange(width, device=tokens.device)
        last_boi = torch.where((tokens == self.layout.boi) & (at >= 0), column, -1).amax(dim=1)
        k = column - last_boi.unsqueeze(1) - 1  # place after that BOI
        fits = self.is_span_inner(tokens)
        if self.format.rows_framed:  # the size prefix first (square spans have none: no gather on their steps)
            plen = self._to_device(self.prefix_len[slots]).unsqueeze(1)
            expected = self._prefix_t[self._to_device(slots).unsqueeze(1), k.clamp(0, self.MAX_PREFIX - 1)]
            fits = torch.where(k < plen, tokens == expected, fits)
        fits |= k < 0
        return torch.where((last_boi >= 0) & fits.all(dim=1), width - 1 - last_boi, -1)

    def samples_code_on_device(self, slots: np.ndarray, pos: torch.Tensor) -> torch.Tensor:
        """Per slot, on the device (``pos`` from the device history): whether this step samples an image code."""
        step = self._span_step(pos, self._to_device(self.rows[slots]), self._to_device(self.cols[slots]), slots)
        return (pos >= 0) & (step < 0)

    def apply_on_device(self, logits: torch.Tensor, slots: np.ndarray, rows: np.ndarray, pos: torch.Tensor,
                        num_output: torch.Tensor, code_logits: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`apply` for a runner whose committed tokens stay on the device (Model Runner V2), without a
        device->host read, so that no step waits for the one before it.

        ``rows`` (host) are the rows whose requests may write images; ``pos`` and ``num_output`` (device, one
        per row of ``rows``) place them, as read from the device history; ``code_logits`` (one row per row of
        ``rows``) are what their codes are drawn from, else ``logits``. Every decision about those rows is a
        mask on the device, and each draws a code whether or not it samples one this step: work for nothing
        on rows writing text, traded for a step that never waits. Other rows are text-only: their masks are
        known on the host, as in :meth:`apply`.
        """
        placed = slots[rows]
        rows_t = self._to_device(rows)
        mode = self._to_device(self.mode[placed])
        in_span = pos >= 0
        step = self._span_step(pos, self._to_device(self.rows[placed]), self._to_device(self.cols[placed]), placed)
        forced = in_span | ((mode == IMAGE_ONLY) & (num_output == 0))
        sampled = in_span & (step < 0)
        token = torch.where(in_span, step, self.layout.boi).clamp_(min=0)
        tracked = logits.index_select(0, rows_t)  # read before the masks below
        kept = _zero_unless_forbidden(tracked.gather(1, token.unsqueeze(1)))
        source = tracked if code_logits is None else code_logits
        code = self._sample_codes(source, np.arange(len(rows)), placed, num_output)
        token = torch.where(sampled, code, token)
        kept = torch.where(sampled.unsqueeze(1), 0.0, kept)
        self._forbid_span_tokens(logits)
        text_only = np.flatnonzero(self.mode[slots] == TEXT_ONLY)
        if len(text_only):
            self._forbid_boi(logits, text_only)
        tracked = logits.index_select(0, rows_t)
        tracked[:, self.layout.boi].masked_fill_(~forced & (mode != INTERLEAVED), float("-inf"))
        fill = torch.full_like(tracked, float("-inf")).scatter_(1, token.unsqueeze(1), kept)
        return logits.index_copy_(0, rows_t, torch.where(forced.unsqueeze(1), fill, tracked))

    def _forbid_span_tokens(self, logits: torch.Tensor) -> None:
        """Forbid codes, EOI and the span's inner tokens (Lumina-mGPT's EOL and size tokens) in every row, as
        text rows need; :meth:`apply` rewrites forced rows afterwards."""
        for cols in (self._code_cols, self._inner_cols):
            if isinstance(cols, slice):
                logits[:, cols] = float("-inf")
            elif len(cols):
                logits.index_fill_(1, cols, float("-inf"))
        logits[:, self.layout.eoi] = float("-inf")

    def _forbid_boi(self, logits: torch.Tensor, rows: np.ndarray) -> None:
        """BOI forbidden in ``rows``: the scalar an argument of the fill, not a host value the device copies in."""
        logits[:, self.layout.boi].index_fill_(0, self._to_device(rows), float("-inf"))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)

    def _sample_codes(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray,
                      num_output: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of one image code per row of ``rows``, under each slot's image sampling settings and
        the seed's draws for each request's ``num_output`` (host, or on the device).

        Reads ``logits`` and leaves them as they are (``apply`` overwrites these rows afterwards).
        """
        if isinstance(self._code_cols, slice):  # rows ascending: all of them is the whole batch, a view
            x = logits[:, self._code_cols]
            if len(rows) < logits.shape[0]:  # a row copy: a tensor index beside a slice costs 4x as much
                x = x.index_select(0, self._to_device(rows))
        else:
            x = logits[self._to_device(rows).unsqueeze(1), self._code_cols]
        hot = self.temperature[slots] > 0
        if not hot.any():  # image_temperature 0: greedy
            return self._code_ids[x.argmax(dim=1)]
        uniforms = self._uniforms(slots, num_output)
        if hot.all():
            return self._code_ids[self._sample_hot(x, slots, uniforms)]
        choice = x.argmax(dim=1)
        hot_t = self._to_device(np.flatnonzero(hot))
        choice[hot_t] = self._sample_hot(x[hot_t], slots[hot], uniforms[hot_t])
        return self._code_ids[choice]

    def _sample_hot(self, x: torch.Tensor, slots: np.ndarray, uniforms: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, then top-p (``engine/worker/nucleus.py``: rejection rounds, ``MAX_ATTEMPTS`` of them
        before a sort) with the rows' ``uniforms``. ``x`` is not written to."""
        width = x.shape[1]
        x = x / self._to_device(self.temperature[slots]).unsqueeze(1)
        top_k = self.top_k[slots]
        k_on = (top_k > 0) & (top_k < width)
        if k_on.any():
            k_max = int(top_k[k_on].max())
            kth_index = self._to_device(np.where(k_on, top_k, k_max) - 1).unsqueeze(1)
            kth = x.topk(k_max, dim=1).values.gather(1, kth_index)
            x = x.masked_fill((x < kth) & self._to_device(k_on).unsqueeze(1), float("-inf"))
        return self._draw_nucleus(x.softmax(dim=1), uniforms, self.top_p[slots])

    def _uniforms(self, slots: np.ndarray, num_output: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Uniforms per row, one per rejection round and one for the sorted fallback (float32), from each
        request's seed and output index: the same on every tensor-parallel rank and across preemption.
        Computed where ``num_output`` lives: on the host, or on the device for the on-device path."""
        if isinstance(num_output, np.ndarray):
            attempts = np.arange(self.MAX_ATTEMPTS + 1)
            return self._to_device(counter_uniforms(self.seed[slots, None], num_output[:, None], attempts)
                                   .astype(np.float32))
        attempts = torch.arange(self.MAX_ATTEMPTS + 1, device=self.device)
        return counter_uniforms(self._to_device(self.seed[slots])[:, None], num_output[:, None], attempts).float()


def _zero_unless_forbidden(values: torch.Tensor) -> torch.Tensor:
    """0.0 for each forced token's logit, or -inf where an earlier stage forbade it (vLLM's min_tokens, a bad
    word, a grammar): Model Runner V2's interface forbids re-allowing a token, and both runners then agree."""
    return torch.where(values == float("-inf"), values, 0.0)


def _request_seed(seed: int | None) -> int:
    """The seed of a request's image draws: its own, else one drawn from numpy's global generator.

    The server draws a seed at admission for every request that may write images
    (``server/sampling.py``), so the fallback serves only requests made to the engine directly. It
    agrees across tensor-parallel ranks as vLLM's own Model Runner V2 sampler does for unseeded
    requests: vLLM seeds every worker's numpy alike and adds requests in the same order.
    """
    return (int(np.random.randint(0, _MASK63, dtype=np.int64)) if seed is None else seed) & _MASK63
