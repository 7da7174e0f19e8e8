"""Image decoding and preprocessing, with transformers' ChameleonImageProcessorPil as the oracle."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from engine.frontend.images import (
    ImageInputError,
    ImagePreprocessor,
    convert_to_rgb,
    decode_image,
    pixels_to_uint8,
    to_png,
)

MAX = 4096 * 4096


def _noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return PIL.Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def _encode(img: PIL.Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _oracle(**kw):
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    return ChameleonImageProcessorPil(**kw)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decode_formats(fmt):
    src = _noise(37, 21)
    out = decode_image(_encode(src, fmt), MAX)
    assert out.mode == "RGB" and out.size == (37, 21)
    if fmt == "PNG":
        assert np.array_equal(np.array(out), np.array(src))


def test_decode_gif_takes_first_frame():
    frames = [PIL.Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.array(decode_image(data, MAX))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_on_white_matches_transformers(mode):
    src = _noise(19, 23, mode, seed=1)
    ours = decode_image(_encode(src, "PNG"), MAX)
    ref = _oracle().convert_to_rgb(PIL.Image.open(io.BytesIO(_encode(src, "PNG"))))
    assert np.array_equal(np.array(ours), np.array(ref))
    assert np.array(ours).mean() > np.array(src.convert("RGB")).mean()  # blended towards white


def test_palette_with_transparency_matches_transformers():
    img = PIL.Image.new("P", (9, 9), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.paste(1, (0, 0, 4, 9))
    data = _encode(img, "PNG", transparency=0)
    ours = decode_image(data, MAX)
    ref = _oracle().convert_to_rgb(PIL.Image.open(io.BytesIO(data)))
    assert np.array_equal(np.array(ours), np.array(ref))
    assert np.array(ours)[0, 8].tolist() == [255, 255, 255]


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_rejected(data):
    with pytest.raises(ImageInputError):
        decode_image(data, MAX)


def test_truncated_rejected():
    data = _encode(_noise(64, 64), "PNG")
    with pytest.raises(ImageInputError):
        decode_image(data[: len(data) // 2], MAX)


def test_unsupported_format_rejected():
    with pytest.raises(ImageInputError):
        decode_image(_encode(_noise(8, 8), "BMP"), MAX)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB but carries no pixel data: decoding it would fail."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_checked_before_decoding():
    # The header alone decides: a 9000 x 9000 claim is refused as too large, not as corrupt.
    with pytest.raises(ImageInputError, match="9000x9000"):
        decode_image(_png_header_only(9000, 9000), max_pixels=1_000_000)
    with pytest.raises(ImageInputError, match="corrupt"):
        decode_image(_png_header_only(100, 100), max_pixels=1_000_000)
    with pytest.raises(ImageInputError):
        decode_image(_encode(_noise(40, 30), "PNG"), max_pixels=40 * 30 - 1)
    assert decode_image(_encode(_noise(40, 30), "PNG"), max_pixels=40 * 30).size == (40, 30)


def test_decompression_bomb_guard_maps_to_input_error(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageInputError):
        decode_image(_encode(_noise(30, 30), "PNG"), MAX)


@pytest.mark.parametrize("size", [(64, 64), (97, 64), (64, 150), (123, 77), (300, 201), (33, 50)])
def test_preprocessor_matches_transformers(size):
    kw = {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}
    src = convert_to_rgb(_noise(*size, seed=size[0]))
    ours = ImagePreprocessor.from_settings(kw)([src])
    ref = torch.as_tensor(np.asarray(_oracle(**kw)(src, return_tensors="np")["pixel_values"]))
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_preprocessor_crop_larger_than_resize_pads_like_transformers():
    kw = {"size": {"shortest_edge": 16}, "crop_size": {"height": 21, "width": 19}}
    src = convert_to_rgb(_noise(31, 47, seed=4))
    ref = np.asarray(_oracle(**kw)(src, return_tensors="np")["pixel_values"])
    ours = ImagePreprocessor.from_settings(kw)([src])
    torch.testing.assert_close(ours, torch.as_tensor(ref), atol=1e-6, rtol=0)


def test_preprocessor_batches_and_reads_both_config_files(tmp_path):
    settings = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "resample": 3,
                "rescale_factor": 0.0078, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]}
    nested_config = {"image_processor": settings, "image_seq_length": 64}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested_config))
    nested = ImagePreprocessor.from_checkpoint(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_seq_length": 64}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    flat = ImagePreprocessor.from_checkpoint(tmp_path)
    assert nested == flat and nested.resample == 3 and nested.crop_size == (16, 16)

    images = [convert_to_rgb(_noise(20, 31, seed=s)) for s in range(3)]
    batch = nested(images)
    ref = _oracle(**settings)(images, return_tensors="np")["pixel_values"]
    assert batch.shape == (3, 3, 16, 16)
    torch.testing.assert_close(batch, torch.as_tensor(np.asarray(ref)), atol=1e-6, rtol=0)


def test_preprocessor_reads_tiny_checkpoint_settings(tmp_path):
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    saved = ChameleonImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    saved.save_pretrained(tmp_path)
    pre = ImagePreprocessor.from_checkpoint(tmp_path)
    assert pre.shortest_edge == 16 and pre.resample == int(PIL.Image.Resampling.LANCZOS)


def test_to_png_round_trip():
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 12, 20, generator=gen) * 2.4 - 1.2  # some out of range
    png = to_png(pixels)
    back = np.array(PIL.Image.open(io.BytesIO(png)))
    assert back.shape == (12, 20, 3)
    expected = ((pixels.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(back, expected)
    assert np.array_equal(back, pixels_to_uint8(pixels).numpy())
    edges = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert pixels_to_uint8(edges).flatten().tolist() == [0, 128, 255]
    assert to_png(pixels) == png
