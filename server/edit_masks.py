"""An image edit's mask (OpenAI's: a PNG the size of the first image, fully transparent where the image is to
change) read as the cells of that image's codes, off the event loop."""

from __future__ import annotations

import asyncio

import numpy as np

from engine.frontend.client import ChameleonEngine
from engine.frontend.images import ImageInputError, decode_image, decode_keeping_alpha
from server.errors import BadRequest
from server.settings import Settings


async def mask_cells(engine: ChameleonEngine, settings: Settings, image: bytes, mask: bytes) -> np.ndarray:
    """The [rows, cols] code cells of ``image`` that ``mask`` marks for change (``ChameleonEngine.editable_cells``);
    a 400 on ``mask`` where the two cannot be read together."""

    def cells() -> np.ndarray:
        try:
            size = decode_image(image, settings.max_image_pixels).size
            drawn = decode_keeping_alpha(mask, settings.max_image_pixels)
        except ImageInputError as exc:
            raise BadRequest(f"image or mask: {exc}", param="mask") from None
        if drawn.size != size:
            raise BadRequest(f"the mask is {drawn.size[0]}x{drawn.size[1]} pixels but the image {size[0]}x{size[1]}:"
                             " they must be the same size", param="mask")
        try:
            return engine.editable_cells(drawn)
        except ImageInputError as exc:
            raise BadRequest(str(exc), param="mask") from None

    return await asyncio.to_thread(cells)
