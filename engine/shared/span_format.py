"""How a checkpoint writes one image as tokens, and which grids it may write; each family builds its own
(``engine/shared/families/``).

- Square spans (Chameleon, Anole): BOI, ``grid * grid`` codes in raster order, EOI; one square grid.
- Row-framed spans: BOI, a size prefix that announces the grid, then the rows, each its codes followed by an
  end-of-line token, then a fixed trailer (possibly empty), then EOI. The size prefix is either
  :class:`SizeTokens` (a height and a width token, each counting patches of codes) or :class:`SizeText`
  (the grid written as text ``H*W`` in the checkpoint's own tokenization, then an opening token).

Ids come from the checkpoint's vocabulary by name; pixel sizes scale with the VQ model's downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SizeTokens:
    """A height token and a width token: ``ids[n]`` announces n patches of ``patch`` codes (-1: none)."""

    ids: tuple[int, ...]
    patch: int = 1

    def encode(self, grid: tuple[int, int]) -> tuple[int, ...]:
        return self.ids[grid[0] // self.patch], self.ids[grid[1] // self.patch]

    def decode(self, tokens: list[int]) -> tuple[int, int] | None:
        """The grid announced by a whole prefix, None while ``tokens`` is not one."""
        if len(tokens) != 2 or any(t < 0 or t not in self.ids for t in tokens):
            return None
        return self.ids.index(tokens[0]) * self.patch, self.ids.index(tokens[1]) * self.patch

    def check(self, grid: tuple[int, int]) -> None:
        for side in grid:
            n = side // self.patch
            if side < self.patch or side % self.patch or n >= len(self.ids) or self.ids[n] < 0:
                raise ValueError(f"image grid {grid[0]}x{grid[1]}: each side must be a multiple of {self.patch} "
                                 "codes with a size token in the vocabulary")

    def special_ids(self) -> list[int]:
        """Prefix tokens that never stand outside a span."""
        return [t for t in self.ids if t >= 0]


@dataclass(frozen=True, slots=True)
class SizeText:
    """The grid as text, ``rows*cols``, then ``opening``: ``numbers[n]`` are the ids the checkpoint's tokenizer
    writes for the decimal n (one token per digit, or merged digits: Emu3's converted tokenizer merges them),
    ``times`` the separator's. These are ordinary text tokens elsewhere: only their place after BOI makes them
    part of a span."""

    numbers: tuple[tuple[int, ...], ...]  # index n: the ids of str(n); index 0 unused
    times: int
    opening: int

    def encode(self, grid: tuple[int, int]) -> tuple[int, ...]:
        rows, cols = grid
        return (*self.numbers[rows], self.times, *self.numbers[cols], self.opening)

    def decode(self, tokens: list[int]) -> tuple[int, int] | None:
        if not tokens or tokens[-1] != self.opening or self.times not in tokens:
            return None
        cut = tokens.index(self.times)
        sides = (tuple(tokens[:cut]), tuple(tokens[cut + 1:-1]))
        if not all(side in self.numbers[1:] for side in sides):
            return None
        return self.numbers.index(sides[0]), self.numbers.index(sides[1])

    def check(self, grid: tuple[int, int]) -> None:
        if min(grid) < 1 or max(grid) >= len(self.numbers):
            raise ValueError(f"image grid {grid[0]}x{grid[1]}: each side needs 1 to {len(self.numbers) - 1} codes")

    def special_ids(self) -> list[int]:
        return [self.opening]


@dataclass(frozen=True, slots=True)
class SpanFormat:
    """One family's image span; ``eol`` is -1 (and ``size`` None) for fixed square spans."""

    native_grid: int  # codes per side of the family's default square image
    eol: int = -1
    size: SizeTokens | SizeText | None = None
    trailer: tuple[int, ...] = ()  # after the last row, before EOI
    # Guidance from the image alone: the unconditional sequence is the open span from its BOI, started afresh
    # for each image (Lumina-mGPT's), instead of a whole unconditional prompt and reply.
    guided_from_boi: bool = False

    @property
    def rows_framed(self) -> bool:
        """Row-framed spans: a size prefix, then rows each closed by ``eol``."""
        return self.eol >= 0

    def span_length(self, grid: tuple[int, int]) -> int:
        """Tokens after BOI up to and including EOI."""
        rows, cols = grid
        if not self.rows_framed:
            return rows * cols + 1
        return len(self.prefix(grid)) + rows * (cols + 1) + len(self.trailer) + 1

    def image_tokens(self, grid: tuple[int, int] | None = None) -> int:
        """One whole image, BOI to EOI, at ``grid`` (None: the native square)."""
        return 1 + self.span_length(grid or (self.native_grid, self.native_grid))

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise ValueError for a grid this format cannot write."""
        if not self.rows_framed:
            if grid != (self.native_grid, self.native_grid):
                raise ValueError(f"this checkpoint writes only {self.native_grid}x{self.native_grid}-code images")
            return
        self.size.check(grid)

    def prefix(self, grid: tuple[int, int]) -> tuple[int, ...]:
        """The tokens between BOI and the first code that announce ``grid`` (none for square spans)."""
        return self.size.encode(grid) if self.rows_framed else ()

    def grid_of_prefix(self, tokens: list[int]) -> tuple[int, int] | None:
        """The grid a whole size prefix announces, None while ``tokens`` is not one."""
        return self.size.decode(tokens) if self.rows_framed else None

    def inner_ids(self) -> list[int]:
        """Non-code tokens that stand only inside a span (EOL, size tokens, the trailer): text never writes
        them. :class:`SizeText`'s digits are not among them."""
        return [self.eol, *self.size.special_ids(), *self.trailer] if self.rows_framed else []
