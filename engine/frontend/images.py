"""Pixels in and out of the VQGAN: untrusted image bytes -> checked RGB -> model tensor, and back to PNG.

Preprocessing reproduces transformers' ``ChameleonImageProcessorPil`` (resize of the
short side with int() truncation, center crop with (size - crop) // 2 offsets,
float64 rescale then float32 normalise) so our image tokens equal the reference's.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from engine.shared.families import CHAMELEON, Family
from engine.shared.processor_settings import image_processor_settings
from engine.shared.vocab import CheckpointError

_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_LANCZOS = int(PIL.Image.Resampling.LANCZOS)


class ImageInputError(ValueError):
    """A client-supplied image cannot be used (not an image, unsupported, too large, corrupt)."""


def decode_image(data: bytes, max_pixels: int) -> PIL.Image.Image:
    """PNG/JPEG/WebP/GIF bytes -> RGB image (first frame), transparency composited on white."""
    return convert_to_rgb(decode_keeping_alpha(data, max_pixels))


def decode_keeping_alpha(data: bytes, max_pixels: int) -> PIL.Image.Image:
    """PNG/JPEG/WebP/GIF bytes -> the image as stored (first frame), transparency kept (an edit's mask).

    The size is checked from the header, before any pixel is decoded, so a small file
    that expands to a huge bitmap costs nothing.
    """
    try:
        img = PIL.Image.open(io.BytesIO(data), formats=_FORMATS)
    except PIL.Image.DecompressionBombError as e:
        raise ImageInputError(f"image is too large: {e}") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"not a supported image (expected one of {', '.join(_FORMATS)})") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageInputError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageInputError(f"image is {width}x{height} = {width * height} pixels; limit {max_pixels}")
    try:
        img.load()  # first frame only for animated GIF/WebP
        return img
    except PIL.Image.DecompressionBombError as e:
        raise ImageInputError(f"image is too large: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"image data is corrupt or truncated: {e}") from e


def convert_to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, blending any transparency over white with transformers' ``convert_to_rgb`` arithmetic."""
    if img.mode == "RGB" and img.info.get("transparency") is None:
        return img
    rgba = np.array(img.convert("RGBA"))
    if not (rgba[:, :, 3] < 255).any():
        return img.convert("RGB")
    alpha = rgba[:, :, 3] / 255.0  # float64, then truncation to uint8: same bits as the reference
    rgb = (1 - alpha[:, :, np.newaxis]) * 255 + alpha[:, :, np.newaxis] * rgba[:, :, :3]
    return PIL.Image.fromarray(rgb.astype("uint8"), "RGB")


@dataclass(frozen=True, slots=True)
class ImagePreprocessor:
    """A checkpoint's saved image-processor settings, applied as ChameleonImageProcessorPil applies them."""

    crop_size: tuple[int, int]  # (height, width): the VQGAN input
    shortest_edge: int | None = None  # resize the short side to this, keeping the aspect ratio ...
    resize_to: tuple[int, int] | None = None  # ... or to exactly (height, width)
    resample: int = _LANCZOS
    rescale_factor: float = 0.0078
    image_mean: tuple[float, ...] = (1.0, 1.0, 1.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        if self.do_resize and (self.shortest_edge is None) == (self.resize_to is None):
            raise ValueError("give exactly one of shortest_edge and resize_to")
        if not self.do_center_crop:
            raise ValueError("do_center_crop=False gives images of varying size; the VQGAN needs one size")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, family: Family = CHAMELEON) -> ImagePreprocessor:
        """The image processor's settings as transformers finds them (``engine/shared/processor_settings.py``);
        a ``family`` whose folders come without any gets :meth:`meta_tokenizer`'s."""
        settings = image_processor_settings(model_dir)
        if settings is not None:
            return cls.from_settings(settings, model_dir)
        config = json.loads((Path(model_dir) / "config.json").read_text())
        if not family.processor_config_required and config.get("vq_config"):
            return cls.meta_tokenizer(int(config["vq_config"]["resolution"]))
        raise CheckpointError(f"{model_dir}: no image-processor settings (processor_config.json, or "
                              "preprocessor_config.json as published checkpoints have them)")

    @classmethod
    def meta_tokenizer(cls, resolution: int) -> ImagePreprocessor:
        """What Meta's image tokenizer does before its VQGAN (which Lumina-mGPT's authors feed their crops
        to): the short side resized to the VQGAN's ``resolution``, a centered square, values to [-1, 1]."""
        return cls.from_settings({"size": {"shortest_edge": resolution},
                                  "crop_size": {"height": resolution, "width": resolution}},
                                 "Meta's image tokenizer")

    @classmethod
    def from_settings(cls, s: dict, source: str | Path = "image processor settings") -> ImagePreprocessor:
        """From the keys transformers saves; missing keys take ChameleonImageProcessorPil's defaults."""
        size, crop = s.get("size", {"shortest_edge": 512}), s.get("crop_size", {"height": 512, "width": 512})
        if isinstance(size, int):
            size = {"shortest_edge": size}  # Chameleon resizes with default_to_square=False
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if "shortest_edge" in size and size.get("longest_edge") is None:
            shortest, resize_to = int(size["shortest_edge"]), None
        elif "height" in size and "width" in size:
            shortest, resize_to = None, (int(size["height"]), int(size["width"]))
        else:
            raise CheckpointError(f"{source}: unsupported image size setting {size}")
        if "height" not in crop or "width" not in crop:
            raise CheckpointError(f"{source}: crop_size needs height and width, got {crop}")

        def flag(name: str) -> bool:  # every do_* flag defaults to True in ChameleonImageProcessorPil
            return True if s.get(name) is None else bool(s[name])

        def triple(name: str) -> tuple[float, ...]:
            v = s.get(name) if s.get(name) is not None else 1.0
            return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3

        try:
            return cls(
                crop_size=(int(crop["height"]), int(crop["width"])),
                shortest_edge=shortest, resize_to=resize_to,
                resample=int(s["resample"]) if s.get("resample") is not None else _LANCZOS,
                rescale_factor=float(s["rescale_factor"]) if s.get("rescale_factor") is not None else 0.0078,
                image_mean=triple("image_mean"), image_std=triple("image_std"),
                do_resize=flag("do_resize"), do_center_crop=flag("do_center_crop"),
                do_rescale=flag("do_rescale"),
                do_normalize=flag("do_normalize"), do_convert_rgb=flag("do_convert_rgb"),
            )
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def _resize_hw(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_to is not None:
            return self.resize_to
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)  # int(), not round()
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _one(self, img: PIL.Image.Image) -> np.ndarray:
        img = convert_to_rgb(img) if self.do_convert_rgb else img.convert("RGB")
        if self.do_resize:
            h, w = self._resize_hw(*img.size)
            img = img.resize((w, h), resample=self.resample)
        arr = np.array(img).transpose(2, 0, 1)  # C, H, W uint8
        arr = _center_crop(arr, *self.crop_size)
        if self.do_rescale:
            arr = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            arr = arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float32)
            mean = np.array(self.image_mean, dtype=arr.dtype)[:, None, None]
            std = np.array(self.image_std, dtype=arr.dtype)[:, None, None]
            arr = (arr - mean) / std
        return arr.astype(np.float32)

    def editable_cells(self, mask: PIL.Image.Image, grid: int) -> np.ndarray:
        """OpenAI's edit mask (the size of the image) as a ``grid`` x ``grid`` boolean map of the image's code
        cells: the mask goes through this image's resize and crop (:func:`cells_under`)."""
        transparent = transparent_area(mask)
        if self.do_resize:
            h, w = self._resize_hw(*mask.size)
            transparent = transparent.resize((w, h), resample=PIL.Image.Resampling.BILINEAR)  # edges spread
        return cells_under(_center_crop(np.array(transparent)[None], *self.crop_size)[0], grid, grid)

    def __call__(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """PIL images -> float32 [B, 3, crop_h, crop_w] VQGAN input."""
        if not images:
            return torch.empty(0, 3, *self.crop_size)
        return torch.from_numpy(np.stack([self._one(img) for img in images]))


def transparent_area(mask: PIL.Image.Image) -> PIL.Image.Image:
    """The fully transparent pixels of OpenAI's edit mask, which mark the area to change, as 255 in an 8-bit
    map (0 elsewhere)."""
    if "A" not in mask.getbands() and not (mask.mode == "P" and "transparency" in mask.info):
        raise ImageInputError("the mask has no alpha channel: its fully transparent pixels mark the area to edit")
    alpha = np.array(mask.convert("RGBA"))[..., 3]
    return PIL.Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8))


def cells_under(area: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A [H, W] map of the image as the VQ model reads it -> [rows, cols]: a cell is editable if any of its
    pixels is marked."""
    height, width = area.shape
    return area.reshape(rows, height // rows, cols, width // cols).max(axis=(1, 3)) > 0


def _center_crop(arr: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' center_crop: offsets (size - crop) // 2; zero-pads (ceil-centred) a smaller image."""
    _, h, w = arr.shape
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return arr[:, top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    pad_top, pad_left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    padded = np.zeros((arr.shape[0], new_h, new_w), dtype=arr.dtype)
    padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = arr
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]: round((x + 1) * 127.5), clamped."""
    scaled = ((pixels.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return scaled.to(torch.uint8).movedim(-3, -1)


def to_png(pixels: torch.Tensor) -> bytes:
    """[3, H, W] in [-1, 1] -> PNG bytes (8-bit RGB)."""
    if pixels.dim() != 3 or pixels.shape[0] != 3:
        raise ValueError(f"to_png expects [3, H, W] pixels, got {tuple(pixels.shape)}")
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels_to_uint8(pixels).numpy(), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_as(png: bytes, output_format: str, compression: int) -> bytes:
    """``png`` re-encoded as ``output_format`` (``png``: unchanged; ``jpeg``/``webp`` at quality ``compression``,
    0-100, as OpenAI's ``output_compression``)."""
    if output_format == "png":
        return png
    out = io.BytesIO()
    PIL.Image.open(io.BytesIO(png)).convert("RGB").save(out, format=output_format.upper(), quality=compression)
    return out.getvalue()
