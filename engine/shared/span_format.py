"""How a checkpoint writes one image as tokens, and which grids it may write; each family builds its own
(``engine/shared/families/``).

- Square spans (Chameleon, Anole): BOI, ``grid * grid`` codes in raster order, EOI; one square grid.
- Row-framed spans (Lumina-mGPT): BOI, a height token and a width token, then the rows, each its codes
  followed by an end-of-line token, then EOI. A size token counts patches of ``patch`` codes.

Ids come from the checkpoint's vocabulary by name; pixel sizes scale with the VQGAN's downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpanFormat:
    """One family's image span. ``size_ids[n]`` is the token for n patches of ``patch`` codes (-1 where the
    vocabulary has none); ``eol`` is -1 for fixed square spans."""

    native_grid: int  # codes per side of the VQGAN's native square
    eol: int = -1
    size_ids: tuple[int, ...] = ()
    patch: int = 1  # codes per patch that a size token counts
    # Guidance from the image alone: the unconditional sequence is the open span from its BOI, started afresh
    # for each image (Lumina-mGPT's), instead of a whole unconditional prompt and reply.
    guided_from_boi: bool = False

    @property
    def rows_framed(self) -> bool:
        """Row-framed spans: size tokens, then rows each closed by ``eol``."""
        return self.eol >= 0

    def span_length(self, grid: tuple[int, int]) -> int:
        """Tokens after BOI up to and including EOI."""
        rows, cols = grid
        return 3 + rows * (cols + 1) if self.rows_framed else rows * cols + 1

    def image_tokens(self, grid: tuple[int, int] | None = None) -> int:
        """One whole image, BOI to EOI, at ``grid`` (None: the native square)."""
        return 1 + self.span_length(grid or (self.native_grid, self.native_grid))

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise ValueError for a grid this format cannot write."""
        rows, cols = grid
        if not self.rows_framed:
            if grid != (self.native_grid, self.native_grid):
                raise ValueError(f"this checkpoint writes only {self.native_grid}x{self.native_grid}-code images")
            return
        for side in (rows, cols):
            n = side // self.patch
            if side < self.patch or side % self.patch or n >= len(self.size_ids) or self.size_ids[n] < 0:
                raise ValueError(f"image grid {rows}x{cols}: each side must be a multiple of {self.patch} codes "
                                 "with a size token in the vocabulary")

    def size_tokens(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The height and width tokens of ``grid`` (rows_framed formats only)."""
        return self.size_ids[grid[0] // self.patch], self.size_ids[grid[1] // self.patch]

    def grid_of_size_tokens(self, height_id: int, width_id: int) -> tuple[int, int] | None:
        """The grid a pair of size tokens announces, None if they are not size tokens."""
        try:
            return (self.size_ids.index(height_id) * self.patch, self.size_ids.index(width_id) * self.patch)
        except ValueError:
            return None

    def inner_ids(self) -> list[int]:
        """Non-code tokens that may stand inside a span (EOL and size tokens)."""
        return [self.eol, *(t for t in self.size_ids if t >= 0)] if self.rows_framed else []
