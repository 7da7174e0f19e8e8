"""One choice's token deltas -> text pieces and finished image spans, in order.

Text comes from vLLM's own incremental detokenizer (it already handles stop
strings and partial UTF-8); token ids decide where image spans are. A delta
made only of span tokens (BOI, codes, EOI) contributes no text — vLLM's rendering
of image codes is not text. Work per token is O(1): a span is a list append. A Lumina-mGPT span's size
tokens give its grid and its end-of-line tokens are dropped, so an image is its codes in raster order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.vocab import TokenLayout


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
        self._sizes: list[int] = []  # the open span's size tokens (rows-framed formats)
        native = layout.span.native_grid
        self._native = (native, native)

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
                    self._span, self._sizes = [], []
                elif not self._layout.is_span_token(tid):
                    run.append(tid)
            elif tid in self._layout.code_of:
                self._span.append(self._layout.code_of[tid])
            elif tid == self._layout.eoi:
                pieces += self._close()
            elif tid != self._layout.span.eol and len(self._sizes) < 2:
                self._sizes.append(tid)
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
        """The open (or just closed) span's grid; None while a Lumina span's size tokens are not all in."""
        if not self._layout.span.rows_framed:
            return self._native
        return self._layout.span.grid_of_size_tokens(*self._sizes) if len(self._sizes) == 2 else None
