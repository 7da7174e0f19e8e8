"""The span processor of one logits tensor: the image-span grammar (``engine/worker/span_rules.py``) and image
sampling (``engine/worker/code_sampler.py``) over per-slot state (``engine/worker/slot_state.py``), as batched
tensor work with no device->host read, the same for both vLLM runners.

Rows outside spans get text masks (codes and EOI forbidden; BOI too unless the request may write images). Rows
inside a span are left with one finite token: the one the grammar forces, or an image code sampled here with the
request's image temperature/top-k/top-p (the checkpoint family's defaults unless the request sets them),
because vLLM's own temperature and top-k/top-p run after logits processors. No vLLM imports here: the V1 and V2
adapters (``runner_v1.py``, ``runner_v2.py``) feed it slots, positions and tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, TEXT_ONLY, RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.code_sampler import CodeSampler, request_seed
from engine.worker.slot_state import Field, SlotTable
from engine.worker.span_rules import MAX_PREFIX, SpanRules, span_position
from engine.worker.transfers import to_device


def slot_fields(layout: TokenLayout) -> dict[str, Field]:
    """The per-slot state of the span processor."""
    native = layout.span.native_grid
    return {
        "mode": Field(np.int8, TEXT_ONLY),
        "pos": Field(np.int64, -1),  # tokens since BOI, -1 outside a span, as the host knows it (the V1 runner)
        "num_output": Field(np.int64, 0),  # output tokens accounted for (the V1 runner)
        "rows": Field(np.int64, native),  # the grid this slot's images are written in
        "cols": Field(np.int64, native),
        "prefix": Field(np.int64, -1, MAX_PREFIX, on_device=True),  # the grid's size prefix
        "prefix_len": Field(np.int64, 0),
        "temperature": Field(np.float32, 0.0),
        "top_k": Field(np.int64, 0),
        "top_p": Field(np.float32, 1.0),
        "seed": Field(np.int64, 0),  # every image draw is counter-based on this seed
        # Masked edits: the token written at each code cell of the slot's image (the input's code outside the
        # mask), -1 where one is sampled; rows of slots without a mask are never read. As wide as the largest
        # edit's grid so far (Emu3 edits at each input image's own grid).
        "has_kept": Field(np.bool_, False),
        "kept": Field(np.int64, -1, native * native, on_device=True),
    }


class SpanGrammar:
    """Per-slot span state, and the batched masking/sampling of one logits tensor."""

    def __init__(self, layout: TokenLayout, max_slots: int, device: torch.device | str = "cpu") -> None:
        self.layout, self.format = layout, layout.span
        self.device = torch.device(device)
        self.state = SlotTable(slot_fields(layout), max_slots, self.device)
        self.rules = SpanRules(layout, self.state, self.device)
        self.sampler = CodeSampler(layout, self.state, self.device)
        self._inner_cols = torch.tensor(self.format.inner_ids(), dtype=torch.long).to(self.device)
        self._inner_host = self.rules.inner_host.numpy()
        self._boi = torch.tensor(layout.boi, device=self.device)  # 0-d operands of torch.where, made once
        self._zero = torch.zeros((), device=self.device)

    def tail_length(self, slot: int) -> int:
        """History tokens :meth:`resync` needs to place ``slot`` (its span's length + 1)."""
        return self.format.span_length((int(self.state.rows[slot]), int(self.state.cols[slot]))) + 1

    def span_lengths(self, slots: np.ndarray) -> np.ndarray:
        """Per slot, the tokens of its spans after BOI, EOI included (``SpanFormat.span_length`` of its grid)."""
        state = self.state
        if not self.format.rows_framed:
            return state.rows[slots] * state.cols[slots] + 1
        return state.prefix_len[slots] + state.rows[slots] * (state.cols[slots] + 1) + len(self.format.trailer) + 1

    def add(self, slot: int, params: RequestOptions, tail: Sequence[int] = (), num_output: int = 0) -> None:
        """(Re)initialise ``slot`` for a request whose history ends with ``tail`` (``()``: place it later with
        :meth:`resync`, which needs :meth:`tail_length` tokens, known once the grid is set here).

        A grid the checkpoint cannot write (the server refuses those with a 400) falls back to the native one.
        A masked edit's cells (``RequestOptions.kept_codes``, one per cell of the grid): ids that are not image
        codes are sampled, and a list of the wrong length (the server refuses those) means no mask.
        """
        native = (self.format.native_grid,) * 2
        grid = params.image_grid or native
        try:
            self.format.check_grid(grid)
        except ValueError:
            grid = native
        prefix = self.format.prefix(grid)[:MAX_PREFIX]
        codes = params.kept_codes if len(params.kept_codes) == grid[0] * grid[1] else ()
        self.state.widen("kept", len(codes))
        kept = np.full(self.state.kept.shape[1], -1, dtype=np.int64)
        kept[:len(codes)] = np.where(np.isin(codes, self.layout.code_to_id), codes, -1)
        self.state.set(slot, mode=params.mode, rows=grid[0], cols=grid[1],
                       prefix=[*prefix, *[-1] * (MAX_PREFIX - len(prefix))], prefix_len=len(prefix),
                       temperature=params.image_temperature, top_k=params.image_top_k, top_p=params.image_top_p,
                       seed=request_seed(params.seed) if params.mode != TEXT_ONLY else 0, has_kept=bool(codes),
                       kept=kept)
        self.resync(slot, tail, num_output)

    def resync(self, slot: int, tail: Sequence[int], num_output: int) -> None:
        """Place ``slot`` from its committed history (entry, resumption, or several new tokens)."""
        state = self.state
        prefix = state.prefix[slot, :state.prefix_len[slot]].tolist()
        state.pos[slot] = span_position(tail, self.layout, prefix, self.rules.inner_host) \
            if state.mode[slot] != TEXT_ONLY else -1
        state.num_output[slot] = num_output

    def remove(self, slot: int) -> None:
        self.state.remove(slot)

    def move(self, src: int, dst: int, swap: bool) -> None:
        """``dst`` takes ``src``'s state; with ``swap`` the two exchange."""
        self.state.move(src, dst, swap)

    def tracked(self, slots: np.ndarray) -> np.ndarray:
        """Those of ``slots`` whose state follows their tokens (text-only rows never change)."""
        return slots[self.state.mode[slots] != TEXT_ONLY]

    def advance(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Account one newly committed token per slot, in the positions the host keeps (the V1 runner)."""
        if not len(slots):
            return
        state, pos = self.state, self.state.pos[slots]
        inner = self._inner_host[np.clip(tokens, 0, len(self._inner_host) - 1)] & (tokens >= 0)
        inner |= pos < state.prefix_len[slots]  # a size prefix's tokens may be text by id
        state.pos[slots] = np.where(tokens == self.layout.boi, 0, np.where(inner & (pos >= 0), pos + 1, -1))
        state.num_output[slots] += 1

    def sampling_code(self, slots: np.ndarray, ahead: np.ndarray | None = None) -> torch.Tensor:
        """Per slot, from the positions the host keeps (``ahead``: tokens past them, as in :meth:`apply`): whether
        this step samples one of its image codes (on the device)."""
        pos = self.state.pos[slots]
        if ahead is not None:
            pos = np.where(pos >= 0, pos + ahead, pos)
        return self.samples_code_on_device(slots, self._to_device(pos))

    def samples_code_on_device(self, slots: np.ndarray, pos: torch.Tensor) -> torch.Tensor:
        """Per slot, on the device (``pos``: its position, on the device): whether this step samples a code."""
        return (pos >= 0) & (self.rules.forced_token(slots, pos) < 0)

    def apply(self, logits: torch.Tensor, slots: np.ndarray, ahead: np.ndarray | None = None) -> torch.Tensor:
        """:meth:`apply_on_device` with the positions the host keeps (the V1 runner's): the rows it forces, those
        that may sample a code and those inside their spans are known there. ``ahead``: per row, tokens its row
        is past those positions (a window's drafts before it, ``engine/worker/jacobi.py``)."""
        state = self.state
        pos, num_output = state.pos[slots], state.num_output[slots]
        if ahead is not None:
            pos, num_output = np.where(pos >= 0, pos + ahead, pos), num_output + ahead
        in_span = pos >= 0
        rows = np.flatnonzero(in_span | ((state.mode[slots] == IMAGE_ONLY) & (num_output == 0)))
        spans = in_span[rows]
        draws = np.flatnonzero(spans)
        return self._apply(logits, slots, rows, self._to_device(pos[rows]) if len(rows) else None, num_output[rows],
                           None, draws, all_forced=True, in_spans=len(draws) == len(rows))

    def apply_on_device(self, logits: torch.Tensor, slots: np.ndarray, rows: np.ndarray, pos: torch.Tensor,
                        num_output: torch.Tensor | np.ndarray, code_logits: torch.Tensor | None = None, *,
                        draws: np.ndarray | None = None, all_forced: bool = False) -> torch.Tensor:
        """Mask row ``i`` of ``logits`` for the request in ``slots[i]`` and sample rows inside spans, without a
        device->host read, so that no step waits for the one before it.

        ``rows`` (host, ascending) are the rows the grammar may force; ``pos`` (device) and ``num_output`` (one per
        row of ``rows``) place them; ``code_logits`` (one row per row of ``rows``) are what their codes are drawn
        from, else ``logits``. Every other row writes text. Each decision about ``rows`` is a mask on the device;
        what the caller knows on the host saves work: ``draws`` (indices into ``rows``; default all) are the
        rows that may sample a code, ``all_forced`` says that every row of ``rows`` is forced, and
        ``num_output`` may be a host array then (else a device tensor). A forced token that an earlier stage
        set to -inf stays -inf: nothing is re-allowed.
        """
        return self._apply(logits, slots, rows, pos, num_output, code_logits,
                           np.arange(len(rows)) if draws is None else draws, all_forced, in_spans=False)

    def _apply(self, logits: torch.Tensor, slots: np.ndarray, rows: np.ndarray, pos: torch.Tensor | None,
               num_output: torch.Tensor | np.ndarray, code_logits: torch.Tensor | None, draws: np.ndarray,
               all_forced: bool, in_spans: bool) -> torch.Tensor:
        """:meth:`apply_on_device`; ``in_spans``: the host knows that every row of ``rows`` is inside its span.
        On a CPU each tensor operation on a handful of elements costs microseconds, as much as a pass over a
        row of the vocabulary, so host knowledge spares them here: the step's operations are fixed by it, never
        by the number of rows."""
        n, boi = logits.shape[0], self.layout.boi
        whole = len(rows) == n
        if len(rows):
            placed = slots[rows]
            rows_t = None if whole else self._to_device(rows)
            step = self.rules.forced_token(placed, pos)
            sampled = step < 0
            if in_spans:
                token = step
            else:
                in_span = pos >= 0
                sampled &= in_span
                token = torch.where(in_span, step, self._boi)
            index = token.clamp(min=0)
            # read before the masks below: the forced token's logit (BOI, EOI, Lumina-mGPT's EOL and size tokens)
            read = logits.gather(1, index.unsqueeze(1)) if whole else logits[rows_t, index].unsqueeze(1)
            kept = _zero_unless_forbidden(read, self._zero)
            if len(draws):
                token = self._draw(logits, code_logits, rows, draws, placed, num_output, sampled, token)
                kept.masked_fill_(sampled.unsqueeze(1), 0.0)
            else:
                token = index
        if all_forced and whole:
            if not n:
                return logits
            return logits.fill_(float("-inf")).scatter_(1, token.unsqueeze(1), kept)
        self._forbid_span_tokens(logits)  # every row, by column slices: forced rows are rewritten below
        no_boi = self.state.mode[slots] != INTERLEAVED  # in rows that write text
        no_boi[rows] = False
        if no_boi.all():
            logits[:, boi].fill_(float("-inf"))
        elif no_boi.any():
            logits[:, boi].index_fill_(0, self._to_device(np.flatnonzero(no_boi)), float("-inf"))
        if not len(rows):
            return logits
        if all_forced:
            logits.index_fill_(0, rows_t, float("-inf"))
            return logits.index_put_((rows_t, token), kept.squeeze(1))
        mode = self._to_device(self.state.mode[placed])
        forced = (in_span | ((mode == IMAGE_ONLY) & (num_output == 0))).unsqueeze(1)
        tracked = logits if whole else logits.index_select(0, rows_t)
        tracked[:, boi].masked_fill_(~forced.squeeze(1) & (mode != INTERLEAVED), float("-inf"))
        fill = torch.full_like(tracked, float("-inf")).scatter_(1, token.unsqueeze(1), kept)
        if whole:
            return logits.copy_(torch.where(forced, fill, tracked))
        return logits.index_copy_(0, rows_t, torch.where(forced, fill, tracked))

    def _draw(self, logits: torch.Tensor, code_logits: torch.Tensor | None, rows: np.ndarray, draws: np.ndarray,
              placed: np.ndarray, num_output: torch.Tensor | np.ndarray, sampled: torch.Tensor, token: torch.Tensor
              ) -> torch.Tensor:
        """``token`` with a drawn code at the rows of ``draws`` (indices into ``rows``) that sample one
        (``sampled``). Codes come from ``code_logits`` (per row of ``rows``), else ``logits``."""
        source, source_rows = (logits, rows[draws]) if code_logits is None else (code_logits, draws)
        if len(draws) == len(rows):  # no index: each would be a dispatch
            return torch.where(sampled, self.sampler.draw(source, source_rows, placed, num_output), token)
        at = self._to_device(draws)
        counts = num_output[draws] if isinstance(num_output, np.ndarray) else num_output[at]
        code = self.sampler.draw(source, source_rows, placed[draws], counts)
        return token.index_copy(0, at, torch.where(sampled[at], code, token[at]))

    def _forbid_span_tokens(self, logits: torch.Tensor) -> None:
        """Forbid codes, EOI and the span's inner tokens (Lumina-mGPT's EOL and size tokens) in every row, as
        text rows need; the scalar an argument of each fill, not a host value the device copies in."""
        for cols in (self.sampler.code_cols, self._inner_cols):
            if isinstance(cols, slice):
                logits[:, cols].fill_(float("-inf"))
            elif len(cols):
                logits.index_fill_(1, cols, float("-inf"))
        logits[:, self.layout.eoi].fill_(float("-inf"))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)


def _zero_unless_forbidden(values: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """0.0 for each forced token's logit, or -inf where an earlier stage forbade it (vLLM's min_tokens, a bad
    word, a grammar): Model Runner V2's interface forbids re-allowing a token, and both runners then agree.
    ``zero``: a 0-d tensor on the device (a Python 0.0 would be wrapped into one at every call)."""
    return torch.where(values.isneginf(), values, zero)
