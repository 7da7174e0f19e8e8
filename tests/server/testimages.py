"""Deterministic test images and data URLs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (80, 64), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def user_message(text: str, images=()) -> dict:
    """One user turn: the text, then each image as a data: URL part."""
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": data_url(im)}}
                                                for im in images]
    return {"role": "user", "content": parts}
