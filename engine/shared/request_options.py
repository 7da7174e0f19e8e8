"""What a request asks of the engine beyond vLLM's ``SamplingParams``, as one typed, frozen object.

The server builds it once per request (``server/pipeline.py``) and keeps it; it crosses to vLLM's worker
in ``SamplingParams.extra_args``, written by :meth:`RequestOptions.extra_args` only and read back once per
request by :meth:`RequestOptions.from_sampling_params` (the worker's adapters; vLLM also calls it to
validate requests made to the engine directly). The keys are the ones a direct vLLM user passes:
``modalities``, ``image_temperature``, ``image_top_k``, ``image_top_p``, ``cfg_scale``,
``cfg_uncond_prompt``, ``image_grid``, ``image_keep`` and ``jacobi_window``. The seed travels as vLLM's own
``SamplingParams.seed``, which vLLM offsets for each choice of an ``n`` > 1 request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.shared.families.base import SamplingDefaults
from engine.shared.jacobi import MAX_WINDOW

TEXT_ONLY, INTERLEAVED, IMAGE_ONLY = 0, 1, 2
_MODES = {frozenset({"text"}): TEXT_ONLY, frozenset({"text", "image"}): INTERLEAVED,
          frozenset({"image"}): IMAGE_ONLY}
_MODALITIES = {mode: sorted(names, reverse=True) for names, mode in _MODES.items()}  # ["text", "image"]
_BASE = SamplingDefaults()  # the base family's (Meta's): the defaults of a request made to the engine directly


def mode_of(modalities: Iterable[str]) -> int:
    """TEXT_ONLY, INTERLEAVED or IMAGE_ONLY for a list of ``"text"``/``"image"``; ValueError otherwise."""
    names = [] if isinstance(modalities, str) or not isinstance(modalities, Iterable) else list(modalities)
    if not names:
        raise ValueError(f'modalities must be a non-empty list of "text"/"image", got {modalities!r}')
    unknown = [m for m in names if m not in ("text", "image")]
    if unknown:
        raise ValueError(f'unknown modality {unknown[0]!r}: expected "text" or "image"')
    return _MODES[frozenset(names)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """One request's reply modalities, image sampling, image grid and guidance; checked when built."""

    mode: int = TEXT_ONLY
    image_temperature: float = _BASE.image_temperature
    image_top_k: int = _BASE.image_top_k  # 0 = off
    image_top_p: float = _BASE.image_top_p
    seed: int | None = None
    cfg_scale: float = 1.0  # classifier-free guidance of image codes; 1.0 = off
    uncond_prompt: tuple[int, ...] = ()  # the unconditional sequence's prompt (engine/worker/guidance.py)
    image_grid: tuple[int, int] | None = None  # (rows, codes per row); None: the checkpoint's native square
    # A masked edit: per code cell of the image, in raster order, the vocabulary id the grammar writes there
    # (the input image's code, outside the mask), or -1 where it samples one; () for no mask.
    kept_codes: tuple[int, ...] = ()
    # Speculative Jacobi decoding's window (engine/worker/jacobi.py): image positions one step may verify; 1 = off,
    # None = the family's default. Within the engine's budget of draft tokens per step.
    jacobi_window: int | None = None

    def __post_init__(self) -> None:
        if not _number(self.image_temperature) or not 0 <= self.image_temperature < math.inf:
            raise ValueError(f"image_temperature must be a number >= 0 (0 = greedy), got {self.image_temperature!r}")
        if isinstance(self.image_top_k, bool) or not isinstance(self.image_top_k, int) or self.image_top_k < 0:
            raise ValueError(f"image_top_k must be an integer >= 0 (0 = off), got {self.image_top_k!r}")
        if not _number(self.image_top_p) or not 0 < self.image_top_p <= 1:
            raise ValueError(f"image_top_p must be in (0, 1], got {self.image_top_p!r}")
        if not _number(self.cfg_scale) or not 0 <= self.cfg_scale < math.inf:
            raise ValueError(f"cfg_scale must be a number >= 0 (1 = no guidance), got {self.cfg_scale!r}")
        if self.guided and self.mode == TEXT_ONLY:
            raise ValueError("cfg_scale guides image codes: it needs image output (modalities with \"image\")")
        grid = self.image_grid
        if grid is not None and (len(grid) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0
                                                            for g in grid)):
            raise ValueError(f"image_grid must be [rows, codes per row] of positive integers, got {list(grid)!r}")
        if self.kept_codes and (self.mode == TEXT_ONLY or not all(isinstance(t, int) and t >= -1
                                                                   for t in self.kept_codes)):
            raise ValueError("image_keep must be a list of token ids (-1: sampled), one per code cell of an image")
        window = self.jacobi_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or not 1 <= window <= MAX_WINDOW):
            raise ValueError(f"jacobi_window must be an integer from 1 (off) to {MAX_WINDOW}, got {window!r}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def modalities(self) -> list[str]:
        return list(_MODALITIES[self.mode])

    @property
    def writes_images(self) -> bool:
        return self.mode != TEXT_ONLY

    @property
    def image_only(self) -> bool:
        return self.mode == IMAGE_ONLY

    def extra_args(self) -> dict[str, Any]:
        """The options as ``SamplingParams.extra_args`` (all but the seed, which is vLLM's own field)."""
        args: dict[str, Any] = {"modalities": self.modalities, "image_temperature": self.image_temperature,
                                "image_top_k": self.image_top_k, "image_top_p": self.image_top_p}
        if self.guided:
            args.update(cfg_scale=self.cfg_scale, cfg_uncond_prompt=list(self.uncond_prompt))
        if self.image_grid is not None:
            args["image_grid"] = list(self.image_grid)
        if self.kept_codes:
            args["image_keep"] = list(self.kept_codes)
        if self.jacobi_window is not None:
            args["jacobi_window"] = self.jacobi_window
        return args

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None, seed: int | None = None) -> RequestOptions:
        """Parse and check what :meth:`extra_args` writes (or a direct vLLM user passes); ValueError if bad."""
        xa = extra_args or {}
        scale, uncond = xa.get("cfg_scale", 1.0), xa.get("cfg_uncond_prompt", [])
        if not isinstance(uncond, Sequence) or isinstance(uncond, str) or \
                not all(isinstance(t, int) and t >= 0 for t in uncond) or \
                (scale != 1.0 and "cfg_uncond_prompt" not in xa):
            raise ValueError("cfg_uncond_prompt must be a list of token ids when cfg_scale is set (empty: "
                             "the image alone, as Lumina-mGPT guides)")
        grid, keep = xa.get("image_grid"), xa.get("image_keep", [])
        if grid is not None and (isinstance(grid, str) or not isinstance(grid, Sequence)):
            raise ValueError(f"image_grid must be [rows, codes per row] of positive integers, got {grid!r}")
        keep = [keep] if isinstance(keep, str) or not isinstance(keep, Sequence) else keep  # refused when built
        return cls(mode_of(xa.get("modalities", ["text"])), xa.get("image_temperature", _BASE.image_temperature),
                   xa.get("image_top_k", _BASE.image_top_k), xa.get("image_top_p", _BASE.image_top_p), seed, scale,
                   tuple(uncond), None if grid is None else tuple(grid), tuple(keep), xa.get("jacobi_window"))

    @classmethod
    def from_sampling_params(cls, sampling_params: Any) -> RequestOptions:
        """The options of one request (one choice of it, whose seed vLLM has derived) inside vLLM."""
        return cls.from_extra_args(sampling_params.extra_args, sampling_params.seed)
