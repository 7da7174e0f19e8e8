"""A chat reply's generated images in the shape its client reads (request field ``image_output_format``).

- ``content_parts``: ``content`` is the ordered list of text and ``image_url`` parts (a plain string
  when the reply has no image); streamed, each image is a chunk whose ``delta.content`` is a one-part list,
  preceded by its previews (``stream_options.partial_images``), the only shape that carries them.
  The only shape that keeps the order of text and images, but outside OpenAI's schema (content: string).
- ``openrouter``: OpenRouter's convention: ``content`` is the text, images are ``image_url`` parts in
  ``message.images`` (``delta.images`` in a stream). Schema-valid; the order is lost.
- ``markdown``: each image inline in the string ``content`` as ``![image N](data:image/png;base64,...)``,
  N counting from 1 per choice; for chat UIs that render Markdown. Schema-valid, in order.
"""

from __future__ import annotations

import base64

from schemas.chat import DeltaMessage, ImageOutputFormat, ImagePart, ImageURL, PartialImagePart, TextPart
from server.generation import PNG, Piece
from server.previews import Preview


def _png_url(data: bytes) -> ImageURL:
    return ImageURL(url="data:image/png;base64," + base64.b64encode(data).decode())


def image_part(png: PNG) -> ImagePart:
    return ImagePart(type="image_url", image_url=_png_url(png.data))


def _markdown(png: PNG, number: int) -> str:
    return f"![image {number}]({image_part(png).image_url.url})"


def message_fields(pieces: list[Piece], shape: ImageOutputFormat) -> dict:
    """``content`` (and ``images``) of a whole reply."""
    if all(isinstance(p, str) for p in pieces):
        return {"content": "".join(pieces)}  # type: ignore[arg-type]
    if shape == "content_parts":
        return {"content": [TextPart(type="text", text=p) if isinstance(p, str) else image_part(p) for p in pieces]}
    if shape == "openrouter":
        return {"content": "".join(p for p in pieces if isinstance(p, str)),
                "images": [image_part(p) for p in pieces if isinstance(p, PNG)]}
    numbered = DeltaShaper(shape)
    return {"content": "".join(numbered.delta(p).content for p in pieces)}  # type: ignore[misc]


class DeltaShaper:
    """One streamed choice: each piece as a delta, images numbered in order for Markdown."""

    def __init__(self, shape: ImageOutputFormat) -> None:
        self._shape = shape
        self._images = 0

    def delta(self, piece: Piece | Preview) -> DeltaMessage | None:
        """The delta of ``piece``; None for a preview in a shape that has no place for one (previews are
        ``content_parts`` only: an inline Markdown or OpenRouter image cannot be replaced by a sharper one)."""
        if isinstance(piece, str):
            return DeltaMessage(content=piece)
        if isinstance(piece, Preview):
            if self._shape != "content_parts":
                return None
            return DeltaMessage(content=[PartialImagePart(image_url=_png_url(piece.data), partial_index=piece.index)])
        self._images += 1
        if self._shape == "content_parts":
            return DeltaMessage(content=[image_part(piece)])
        if self._shape == "openrouter":
            return DeltaMessage(content="", images=[image_part(piece)])
        return DeltaMessage(content=_markdown(piece, self._images))
