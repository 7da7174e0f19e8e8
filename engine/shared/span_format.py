"""How a checkpoint family writes one image as tokens, and which grids it may write.

- Chameleon (and Anole): BOI, ``grid * grid`` codes in raster order, EOI; one square grid.
- Lumina-mGPT (``ChameleonXLLMXForConditionalGeneration``), facts from Alpha-VLLM/Lumina-mGPT@104abe4
  ``lumina_mgpt/data/item_processor.py`` (FlexARItemProcessor) and ``inference_solver.py``: BOI, a height
  token and a width token ``<reserved{8800 + n:05d}>`` with n in patches of 32 px (two VQGAN codes), then
  the rows, each its codes followed by the end-of-line token ``<reserved08799>``, then EOI. The grids it
  was trained on are ``generate_crop_size_list((target // 32) ** 2, 32)``: every (w, h) in patches with
  w * h <= N and aspect <= 4, reached by walking w down from N while raising h as far as the area allows.

Ids come from the checkpoint's vocabulary by name; pixel sizes scale with the VQGAN's downsampling, so a
tiny checkpoint's patch is two of its codes too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.plugin import LUMINA_ARCHITECTURE

EOL_NAME = "<reserved08799>"
CODES_PER_PATCH = 2  # a Lumina size token counts patches of two codes (32 px at Chameleon's 16 px per code)
_MAX_ASPECT = 4.0


def size_token_name(patches: int) -> str:
    """Lumina's name of the height/width token for ``patches`` patches."""
    return f"<reserved{8800 + patches:05d}>"


@dataclass(frozen=True, slots=True)
class SpanFormat:
    """One family's image span. ``size_ids[n]`` is the token for n patches (-1 where the vocabulary has
    none); ``eol`` is -1 for fixed square spans."""

    native_grid: int  # codes per side of the VQGAN's native square
    eol: int = -1
    size_ids: tuple[int, ...] = ()

    @property
    def rows_framed(self) -> bool:
        """Lumina's grammar: size tokens, then rows each closed by ``eol``."""
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
            n = side // CODES_PER_PATCH
            if side < CODES_PER_PATCH or side % CODES_PER_PATCH or n >= len(self.size_ids) or self.size_ids[n] < 0:
                raise ValueError(f"image grid {rows}x{cols}: each side must be a multiple of {CODES_PER_PATCH} codes "
                                 "with a size token in the vocabulary")

    def size_tokens(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The height and width tokens of ``grid`` (rows_framed formats only)."""
        return self.size_ids[grid[0] // CODES_PER_PATCH], self.size_ids[grid[1] // CODES_PER_PATCH]

    def grid_of_size_tokens(self, height_id: int, width_id: int) -> tuple[int, int] | None:
        """The grid a pair of size tokens announces, None if they are not size tokens."""
        try:
            return (self.size_ids.index(height_id) * CODES_PER_PATCH, self.size_ids.index(width_id) * CODES_PER_PATCH)
        except ValueError:
            return None

    def inner_ids(self) -> list[int]:
        """Non-code tokens that may stand inside a span (EOL and size tokens)."""
        return [self.eol, *(t for t in self.size_ids if t >= 0)] if self.rows_framed else []

    @classmethod
    def for_checkpoint(cls, architectures: list[str], vocabulary_map: dict[str, int], native_grid: int) -> SpanFormat:
        if LUMINA_ARCHITECTURE not in architectures:
            return cls(native_grid)
        if EOL_NAME not in vocabulary_map:
            raise ValueError(f"a Lumina-mGPT vocabulary_map needs its end-of-line token {EOL_NAME}")
        size_ids, n = [], 0
        while size_token_name(n) in vocabulary_map:
            size_ids.append(vocabulary_map[size_token_name(n)])
            n += 1
        if len(size_ids) < 2:
            raise ValueError(f"a Lumina-mGPT vocabulary_map needs its size tokens {size_token_name(0)}, "
                             f"{size_token_name(1)}, ...")
        return cls(native_grid, vocabulary_map[EOL_NAME], tuple(size_ids))


def lumina_grids(target_patches: int, max_patches: int) -> list[tuple[int, int]]:
    """Lumina's trained (rows, cols) code grids for a square of ``target_patches`` patches a side, as its
    crop-size list walks them, limited to sides of at most ``max_patches``."""
    area, found = target_patches**2, []
    w, h = area, 1
    while w > 0:
        if max(w, h) / min(w, h) <= _MAX_ASPECT and max(w, h) <= max_patches:
            found.append((h * CODES_PER_PATCH, w * CODES_PER_PATCH))
        if (h + 1) * w <= area:
            h += 1
        else:
            w -= 1
    return found


def image_sizes(span: SpanFormat, pixels_per_code: int, target_pixels: int) -> dict[str, tuple[int, int]]:
    """The sizes a checkpoint writes, ``"WxH"`` (pixels) -> (rows, cols) code grid, the default first:
    Chameleon's native square, or Lumina's trained grids around a square of ``target_pixels``."""
    if not span.rows_framed:
        side = span.native_grid * pixels_per_code
        return {f"{side}x{side}": (span.native_grid, span.native_grid)}
    patch = CODES_PER_PATCH * pixels_per_code
    grids = lumina_grids(max(1, target_pixels // patch), len(span.size_ids) - 1)
    grids.sort(key=lambda g: g[0] != g[1])  # the square first: the authors' examples ask for it
    return {f"{cols * pixels_per_code}x{rows * pixels_per_code}": (rows, cols) for rows, cols in grids}


def target_resolution(model_dir: str, native_pixels: int) -> int:
    """Lumina's target size: its checkpoints are named by it (``Lumina-mGPT-7B-768``); else the VQGAN's."""
    match = re.search(r"(?:^|[-_])(\d{3,4})(?:$|[-_])", model_dir.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else native_pixels
