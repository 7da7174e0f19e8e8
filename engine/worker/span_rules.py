"""The image-span grammar: where a row is in its span, and which token the span forces next there, as tensor
arithmetic over rows on any device (the step's, or the host's CPU for a history the host holds).

Outside a span image codes and EOI are forbidden; after BOI comes the checkpoint family's span
(``engine/shared/span_format.py``): Chameleon's ``rows * cols`` codes then EOI, or a row-framed span's size
prefix (Lumina-mGPT's size tokens, Emu3's ``H*W`` text), EOL-closed rows of the request's grid and a trailer
then EOI. A masked edit's kept cells are forced to their codes. Per-slot facts come from a
:class:`~engine.worker.slot_state.SlotTable` (``rows``, ``cols``, ``prefix``, ``prefix_len``, ``has_kept``,
``kept``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.shared.vocab import TokenLayout
from engine.worker.slot_state import SlotTable
from engine.worker.transfers import to_device

MAX_PREFIX = 16  # tokens of a size prefix: Emu3's "9999*9999" and its opening token fit


def inner_table(layout: TokenLayout) -> torch.Tensor:
    """Per token id (CPU, bool): whether it is a code or another token inside a span (not BOI or EOI)."""
    codes, inner = layout.code_to_id, layout.span.inner_ids()
    table = torch.zeros(max(layout.vocab_size, max(codes) + 1, *(t + 1 for t in inner)), dtype=torch.bool)
    table[list(codes)] = True
    table[inner] = True
    return table


def span_positions(tokens: torch.Tensor, at: torch.Tensor, boi: int, inner: torch.Tensor,
                   prefix_len: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of ``tokens`` (rows x window, oldest first, at history positions ``at``; < 0: before the history
    began): tokens written since an unclosed BOI, or -1 outside a span. After the BOI come the row's size
    prefix (``prefix_len`` tokens of ``prefix``, rows x MAX_PREFIX; its tokens may be text by id, as Emu3's
    digits are) and then span tokens (``inner``: :func:`inner_table`). The window needs the span's length + 1."""
    width = tokens.shape[1]
    column = torch.arange(width, device=tokens.device)
    last_boi = torch.where((tokens == boi) & (at >= 0), column, -1).amax(dim=1)
    k = column - last_boi.unsqueeze(1) - 1  # place after that BOI
    fits = inner[tokens.clamp(0, len(inner) - 1)] & (tokens >= 0)
    if prefix is not None:  # square spans have no prefix: no gather on their steps
        expected = prefix.gather(1, k.clamp(0, MAX_PREFIX - 1))
        fits = torch.where(k < prefix_len.unsqueeze(1), tokens == expected, fits)
    fits |= k < 0
    return torch.where((last_boi >= 0) & fits.all(dim=1), width - 1 - last_boi, -1)


def span_position(tail: Sequence[int], layout: TokenLayout, prefix: Sequence[int] = (),
                  inner: torch.Tensor | None = None) -> int:
    """:func:`span_positions` of one history the host holds (``tail``: its last tokens), with size ``prefix``,
    on the host's CPU (``inner``: the layout's :func:`inner_table`, built here if not given)."""
    if not tail:
        return -1
    tokens = torch.tensor([list(tail)], dtype=torch.long)
    padded = torch.tensor([[*prefix, *[-1] * (MAX_PREFIX - len(prefix))][:MAX_PREFIX]], dtype=torch.long)
    return int(span_positions(tokens, torch.arange(len(tail)).unsqueeze(0), layout.boi,
                              inner_table(layout) if inner is None else inner, torch.tensor([len(prefix)]), padded)[0])


class SpanRules:
    """The grammar of one checkpoint's spans over the slots of ``state``, on ``device``."""

    def __init__(self, layout: TokenLayout, state: SlotTable, device: torch.device) -> None:
        self.layout, self.format, self.state, self.device = layout, layout.span, state, device
        self.inner_host = inner_table(layout)
        self.inner = self.inner_host.to(device)
        self._tail_ids = torch.tensor([*self.format.trailer, layout.eoi], dtype=torch.long).to(device)
        self._eoi, self._none = torch.tensor(layout.eoi, device=device), torch.tensor(-1, device=device)  # 0-d

    def positions(self, slots: np.ndarray, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """:func:`span_positions` of the requests in ``slots`` from their histories' last tokens on the device."""
        if not self.format.rows_framed:
            return span_positions(tokens, at, self.layout.boi, self.inner)
        slots_t = self._to_device(slots)
        return span_positions(tokens, at, self.layout.boi, self.inner, self._to_device(self.state.prefix_len[slots]),
                              self.state.device("prefix").index_select(0, slots_t))

    def forced_token(self, slots: np.ndarray, pos: torch.Tensor) -> torch.Tensor:
        """Per request in ``slots`` inside its span (``pos`` tokens since its BOI, on the device): the token its
        grammar forces next (a masked edit's kept code among them), or -1 where it samples a code."""
        state = self.state
        if not self.format.rows_framed:  # BOI, rows * cols codes, EOI
            step = torch.where(pos >= self._to_device(state.rows[slots] * state.cols[slots]), self._eoi, self._none)
            return self._kept_code(step, pos, slots)
        # BOI, the grid's size prefix, rows x (cols codes + EOL), the trailer, EOI
        rows, cols = self._to_device(state.rows[slots]), self._to_device(state.cols[slots])
        plen = self._to_device(state.prefix_len[slots])
        prefix = state.device("prefix")[self._to_device(slots), pos.clamp(0, MAX_PREFIX - 1)]
        q = pos - plen
        step = torch.where((q + 1) % (cols + 1) == 0, self.format.eol, -1)
        after = q - rows * (cols + 1)
        step = torch.where(after >= 0, self._tail_ids[after.clamp(0, len(self._tail_ids) - 1)], step)
        step = torch.where(pos < plen, prefix, step)
        return self._kept_code(step, q // (cols + 1) * cols + q % (cols + 1), slots)

    def _kept_code(self, step: torch.Tensor, cell: torch.Tensor, slots: np.ndarray) -> torch.Tensor:
        """``step`` with a masked edit's kept code at the cells where it would sample (``cell``: the code cell
        each row is at); unchanged, and no work, for a batch without masked edits."""
        masked = self.state.has_kept[slots]
        if not masked.any():
            return step
        kept = self.state.device("kept")
        kept = kept[self._to_device(slots), cell.clamp(0, kept.shape[1] - 1)]
        return torch.where((step < 0) & self._to_device(masked), kept, step)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)
