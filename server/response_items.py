"""Responses API output: the reply's pieces as output items in order, and the stream events that build them.

Consecutive text pieces share one ``message`` item; each image is an ``image_generation_call`` item,
opened by its first preview (the tool's ``partial_images``) or, without previews, when it is finished.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid

from schemas.responses import ImageGenerationCall, MessageItem, OutputItem, OutputText
from server.generation import PNG, Piece
from server.previews import Preview


class OutputItems:
    def __init__(self, output_format: str = "png") -> None:
        self.items: list[OutputItem] = []
        self.output_format = output_format  # what the images' bytes are (the image tool's output_format)

    def add_text(self, text: str) -> tuple[MessageItem, bool]:
        """The message item the text joins, and whether it was opened by this text."""
        last = self.items[-1] if self.items else None
        if isinstance(last, MessageItem) and last.status == "in_progress":
            last.content[0].text += text
            return last, False
        item = MessageItem(id=f"msg_{uuid.uuid4().hex}", status="in_progress", content=[OutputText(text=text)])
        self.items.append(item)
        return item, True

    def open_image(self) -> tuple[ImageGenerationCall, bool]:
        """The image item being written, and whether this call opened it (closing the text before it)."""
        last = self.items[-1] if self.items else None
        if isinstance(last, ImageGenerationCall) and last.status == "in_progress":
            return last, False
        self.close_text()
        item = ImageGenerationCall(id=f"ig_{uuid.uuid4().hex}", status="in_progress", result=None,
                                   output_format=self.output_format)
        self.items.append(item)
        return item, True

    def add_image(self, png: PNG) -> ImageGenerationCall:
        """Complete the image item being written (opening one if there is none)."""
        item, _ = self.open_image()
        item.status, item.result = "completed", base64.b64encode(png.data).decode()
        return item

    def close_unfinished_image(self) -> ImageGenerationCall | None:
        """An image item left open by a reply cut inside its image: failed, with no result."""
        last = self.items[-1] if self.items else None
        if isinstance(last, ImageGenerationCall) and last.status == "in_progress":
            last.status = "failed"
            return last
        return None

    def close_text(self, status: str = "completed") -> MessageItem | None:
        """Close the open message item, if any, and return it."""
        last = self.items[-1] if self.items else None
        if isinstance(last, MessageItem) and last.status == "in_progress":
            last.status = status  # type: ignore[assignment]
            return last
        return None

    @classmethod
    def of(cls, pieces: list[Piece], status: str, output_format: str = "png") -> list[OutputItem]:
        """The items of a whole reply; an empty reply is still one (empty) message, as OpenAI answers."""
        items = cls(output_format)
        for piece in pieces or [""]:
            items.add_text(piece) if isinstance(piece, str) else items.add_image(piece)
        items.close_text(status)
        return items.items


class ResponseEvents:
    """SSE events of one streamed response, numbered from 0, and the items they have built so far."""

    def __init__(self, output_format: str = "png") -> None:
        self.output = OutputItems(output_format)
        self._sequence = itertools.count()

    def event(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": next(self._sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    def piece(self, piece: Piece | Preview) -> list[str]:
        """A text delta (opening a message item first if needed), a preview of the image being written,
        or a finished image (opening its item first when no preview did)."""
        if isinstance(piece, str):
            return self._text(piece)
        closed = self.output.close_text()
        out = self._text_done(closed) if closed is not None else []
        image, opened = self.output.open_image()
        index = len(self.output.items) - 1
        if opened:
            out += [self.event("response.output_item.added", output_index=index, item=image.model_dump()),
                    *(self.event(f"response.image_generation_call.{stage}", output_index=index, item_id=image.id)
                      for stage in ("in_progress", "generating"))]
        if isinstance(piece, Preview):
            return out + [self.event("response.image_generation_call.partial_image", output_index=index,
                                     item_id=image.id, partial_image_index=piece.index,
                                     partial_image_b64=base64.b64encode(piece.data).decode())]
        self.output.add_image(piece)
        return out + [self.event("response.image_generation_call.completed", output_index=index, item_id=image.id),
                      self.event("response.output_item.done", output_index=index, item=image.model_dump())]

    def finish(self, status: str) -> list[str]:
        """Close the last message item (an empty reply gets one empty message), or fail an image item
        whose image was cut off after its previews."""
        if failed := self.output.close_unfinished_image():
            return [self.event("response.output_item.done", output_index=len(self.output.items) - 1,
                               item=failed.model_dump())]
        out = [] if self.output.items else self._text("")
        closed = self.output.close_text(status)
        return out + (self._text_done(closed) if closed is not None else [])

    def _text(self, text: str) -> list[str]:
        item, opened = self.output.add_text(text)
        index = len(self.output.items) - 1
        out = []
        if opened:
            empty = item.model_copy(update={"content": []}).model_dump()
            out += [self.event("response.output_item.added", output_index=index, item=empty),
                    self.event("response.content_part.added", item_id=item.id, output_index=index, content_index=0,
                               part=OutputText(text="").model_dump())]
        if text:
            out.append(self.event("response.output_text.delta", item_id=item.id, output_index=index,
                                  content_index=0, delta=text, logprobs=[]))
        return out

    def _text_done(self, item: MessageItem) -> list[str]:
        index = self.output.items.index(item)
        part = item.content[0].model_dump()
        return [self.event("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                           text=part["text"], logprobs=[]),
                self.event("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                           part=part),
                self.event("response.output_item.done", output_index=index, item=item.model_dump())]
