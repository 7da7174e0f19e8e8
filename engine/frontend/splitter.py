"""One choice's token deltas -> text pieces and finished image spans, in order.

Text comes from vLLM's own incremental detokenizer (it already handles stop
strings and partial UTF-8); token ids decide where image spans are. A delta
made only of span tokens (BOI, codes, EOI) contributes no text — vLLM's rendering
of image codes is not text. Work per token is O(1): a span is a list append. A row-framed span's size
prefix gives its grid, and its end-of-line and trailer tokens are dropped, so an image is its codes in raster
order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.shared.vocab import TokenLayout


@dataclass(frozen=True, slots=True)
class ImageCodes:
    """A complete image span: codebook indices in raster order, ``grid`` = (rows, codes per row)."""

    codes: list[int]
    grid: tuple[int, int]


Piece = str | ImageCodes


class SpanSplitter:
    def __init__(self, layout: TokenLayout, decode_text: Callable[[list[int]], str]) -> None:
        self._layout = layout
        self._decode_text = decode_text
        self._span: list[int] | None = None  # codes of the open span, None outside one
        self._prefix: list[int] = []  # the open span's size prefix so far (row-framed formats)
        native = layout.span.native_grid
        self._grid: tuple[int, int] | None = None if layout.span.rows_framed else (native, native)

    @property
    def in_span(self) -> bool:
        return self._span is not None

    @property
    def open_span(self) -> list[int] | None:
        """Codes of the open span so far (live, read-only; a new list per span), None outside one."""
        return self._span

    def feed(self, token_ids: Sequence[int], text: str) -> list[Piece]:
        """Pieces completed by this delta; ``text`` is vLLM's text for the same tokens."""
        if self._span is None and not any(self._layout.is_span_token(t) for t in token_ids):
            return [text] if text else []
        pieces: list[Piece] = []
        run: list[int] = []  # text tokens sharing a delta with span tokens (multi-token steps)
        for tid in token_ids:
            if self._span is None:
                if tid == self._layout.boi:
                    if run:
                        pieces.append(self._decode_text(run))
                        run = []
                    self._span, self._prefix = [], []
                    if self._layout.span.rows_framed:
                        self._grid = None
                elif not self._layout.is_span_token(tid):
                    run.append(tid)
            elif tid in self._layout.code_of:
                self._span.append(self._layout.code_of[tid])
            elif tid == self._layout.eoi:
                pieces += self._close()
            elif self._grid is None:
                self._prefix.append(tid)
                self._grid = self._layout.span.grid_of_prefix(self._prefix)
        if run:
            pieces.append(self._decode_text(run))
        return [p for p in pieces if p != ""]

    def finish(self) -> list[Piece]:
        """At the end of the request: a span that got all its codes but whose EOI was the stop token."""
        return self._close() if self._span is not None else []

    def _close(self) -> list[Piece]:
        span, self._span = self._span, None
        grid = self.grid
        return [ImageCodes(span, grid)] if span is not None and grid and len(span) == grid[0] * grid[1] else []

    @property
    def grid(self) -> tuple[int, int] | None:
        """The open (or just closed) span's grid; None while its size prefix is not all in."""
        return self._grid


class StopTextHold:
    """Holds back the text that could be the start of a stop string, and drops the stop string at the end.

    vLLM holds back such text itself, but releases it only when more text comes: in a reply with images the
    text before an image would then arrive after it, or be lost. Requests that may write images therefore ask
    vLLM to keep the stop string (``include_stop_str_in_output``, server/sampling.py) and hold back here, in
    the order of the pieces: an image flushes the text before it.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._hold = max(len(s) for s in stops) - 1
        self._text = ""

    def feed(self, pieces: list[Piece], stop_reason: int | str | None = None, finished: bool = False,
             image_open: bool = False) -> list[Piece]:
        """Pieces safe to send now; ``stop_reason`` is vLLM's (the matched string, when a string stopped it).
        While an image is being written (``image_open``) the text before it is sent: previews follow it."""
        out: list[Piece] = []
        for piece in pieces:
            if isinstance(piece, str):
                self._text += piece
                continue
            if self._text:
                out.append(self._text)
                self._text = ""
            out.append(piece)
        if finished:
            text, self._text = self._text, ""
            if isinstance(stop_reason, str) and text.endswith(stop_reason):
                text = text[: len(text) - len(stop_reason)]
            return out + ([text] if text else [])
        keep = 0 if image_open else self._hold
        if len(self._text) > keep:
            cut = len(self._text) - keep
            out.append(self._text[:cut])
            self._text = self._text[cut:]
        return out
