"""The image sizes a checkpoint writes, as ``"WxH"`` pixels and the (rows, codes per row) grid behind each: a
list where its authors trained a few (Chameleon's one square, Lumina-mGPT's crops), a rule where their
processor takes any ratio and area (Emu3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

Grid = tuple[int, int]  # (rows, codes per row)
_SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")


def size_name(grid: Grid, pixels_per_code: int) -> str:
    """``"WxH"`` of the image a ``grid`` of codes decodes to."""
    rows, cols = grid
    return f"{cols * pixels_per_code}x{rows * pixels_per_code}"


@dataclass(frozen=True, slots=True)
class ListedSizes:
    """The sizes a checkpoint was trained on, the default first: any other is refused."""

    grids: MappingProxyType  # "WxH" -> grid

    def __post_init__(self) -> None:
        if not self.grids:
            raise ValueError("a checkpoint that writes images writes at least one size")

    @property
    def default(self) -> Grid:
        return next(iter(self.grids.values()))

    @property
    def offered(self) -> dict[str, str]:
        """``"WxH"`` -> how a person would pick it (here the size itself), the default first."""
        return {size: size for size in self.grids}

    def grid(self, size: str) -> Grid:
        """The grid of ``size``; ValueError saying which sizes there are."""
        if size not in self.grids:
            raise ValueError(f"{size!r} is not a size this model writes: 'auto' or one of {', '.join(self.grids)}")
        return self.grids[size]


@dataclass(frozen=True, slots=True)
class RoundedSizes:
    """Any ``"WxH"``, rounded to whole codes as Emu3's processor rounds an asked ratio and area
    (``calculate_generate_size``: round(H / f) rows of round(W / f) codes), within the pixels its image processor
    takes (``min_pixels``..``max_pixels``) and the sides its size prefix can say."""

    pixels_per_code: int
    min_pixels: int
    max_pixels: int
    max_side: int  # codes
    default: Grid
    ratios: MappingProxyType  # "W:H" -> its grid at the default area, for people to pick from

    @property
    def offered(self) -> dict[str, str]:
        """``"WxH"`` -> its ratio, for each of :attr:`ratios` within the range."""
        return {size_name(grid, self.pixels_per_code): ratio for ratio, grid in self.ratios.items() if self.fits(grid)}

    def fits(self, grid: Grid) -> bool:
        """Whether the image processor's range and the size prefix hold a ``grid``."""
        pixels = grid[0] * grid[1] * self.pixels_per_code ** 2
        return min(grid) >= 1 and max(grid) <= self.max_side and self.min_pixels <= pixels <= self.max_pixels

    def grid(self, size: str) -> Grid:
        """The grid written for ``size``; ValueError stating the rule and the range."""
        f = self.pixels_per_code
        rule = (f"sizes are 'auto' or 'WxH' in pixels, rounded to multiples of {f}, of {self.min_pixels} to "
                f"{self.max_pixels} pixels in all and at most {self.max_side * f} a side")
        match = _SIZE.fullmatch(size)
        if not match:
            raise ValueError(f"{size!r} is not a size: {rule}")
        width, height = map(int, match.groups())
        grid = round(height / f), round(width / f)
        if not self.fits(grid):
            raise ValueError(f"{size!r} would be written as {size_name(grid, f)}, outside this model's range: {rule}")
        return grid
