"""`POST /v1/images/generations` (text to image), and the reply it shares with `POST /v1/images/edits` (images
and text to image, ``server/routes/image_edits.py``).

Both become a chat request with modalities ["image"] and run the shared pipeline; they differ only in the
prompt (an edit's user turn holds its input images, then the instruction). Replies are ``b64_json`` images in
the asked ``output_format``; with ``stream`` they come as OpenAI's ``image_generation.*`` / ``image_edit.*``
events: up to ``partial_images`` previews of each image while it is written, then one ``completed`` event per
image with the usage of that image's tokens. Nothing follows the last event (OpenAI sends no ``[DONE]`` here);
a failure mid-stream is one ``error`` event.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.frontend.client import ChameleonEngine
from engine.shared.image_sizes import size_name
from schemas.chat import ChatCompletionRequest, ChatMessage, TextPart
from schemas.images import (
    SCHEMA_SIZES,
    ImageData,
    ImageGenerationRequest,
    ImageRequest,
    ImagesResponse,
    ImageStreamEvent,
)
from server import driver
from server.context import RequestContext
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import APIError, BadRequest, error_body
from server.generation import PNG, ChoiceDelta, in_format
from server.pipeline import prepare_chat
from server.previews import Preview
from server.settings import Settings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
_SAMPLING = {"seed", "image_temperature", "image_top_k", "image_top_p", "jacobi_window", "cfg_scale",  # chat's
             "negative_prompt", "image_prompt_suffix"}


@router.post("/images/generations", response_model=None)
async def generate_images(
    req: ImageGenerationRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ImagesResponse | StreamingResponse:
    content = [TextPart(type="text", text=req.prompt)]
    return await images_reply(req, content, "image_generation", request, settings, engine)


async def images_reply(req: ImageRequest, content: list, kind: str, request: Request,
                  settings: Settings, engine: ChameleonEngine,
                  editable: np.ndarray | None = None) -> ImagesResponse | StreamingResponse:
    if req.model is not None:
        check_model(req.model, settings)
    if req.response_format != "b64_json":
        raise BadRequest("only response_format 'b64_json' is supported", param="response_format")
    # One user turn, exactly as a chat request with modalities ["image"] would send it; fields left unset stay
    # unset, so that the family's defaults apply as on chat.
    chat = ChatCompletionRequest(model=settings.served_model_name, n=req.n, modalities=["image"],
                                 messages=[ChatMessage(role="user", content=content)], image_size=req.size,
                                 **req.model_dump(include=_SAMPLING, exclude_unset=True))
    ctx = await prepare_chat(engine, settings, chat, f"img-{uuid.uuid4().hex}", request.state.log,
                             size_param="size", editable=editable)
    shape = _Shape(req, engine, ctx, kind)
    if req.stream:
        return driver.stream(ctx, engine, shape, req.partial_images)
    choices = await driver.collect(request, ctx, engine)
    images = [(p, c.token_ids) for c in choices for p in c.pieces if isinstance(p, PNG)]
    if len(images) != req.n:  # the grammar forces a full span within max_tokens: this is a bug if it happens
        raise APIError(f"generated {len(images)} of {req.n} images")
    data = [ImageData(b64_json=await shape.b64(png), token_ids=ids if req.return_token_ids else None)
            for png, ids in images]
    return ImagesResponse(created=ctx.created, data=data, background="opaque", output_format=req.output_format,
                          size=shape.schema_size, quality=shape.schema_quality, usage=ctx.usage.images(),
                          image_size=shape.size)


class _Shape:
    """How one request's images are returned: format, reported size and quality; streamed, as OpenAI's
    ``image_generation.*`` / ``image_edit.*`` events (``kind``), each finished image with its own tokens' usage."""

    def __init__(self, req: ImageRequest, engine: ChameleonEngine, ctx: RequestContext, kind: str) -> None:
        self.req, self.ctx, self.kind = req, ctx, kind
        grid = ctx.options.image_grid or engine.image_grid
        self.size = size_name(grid, engine.pixels_per_code)  # what is written, whatever was asked
        # What OpenAI's schemas can say of them (events say "auto" where these are None)
        self.schema_size = self.size if self.size in SCHEMA_SIZES else None
        self.schema_quality = req.quality if req.quality in ("low", "medium", "high") else None

    async def b64(self, image: PNG | Preview) -> str:
        return base64.b64encode((await in_format(image, self.req)).data).decode()

    async def _event(self, kind: str, image: PNG | Preview, **fields) -> str:
        event = ImageStreamEvent(type=kind, b64_json=await self.b64(image), created_at=int(time.time()),
                                 size=self.schema_size or "auto", image_size=self.size,
                                 quality=self.schema_quality or "auto",
                                 background=self.req.background, output_format=self.req.output_format, **fields)
        return f"event: {kind}\ndata: {event.model_dump_json()}\n\n"

    def opening(self) -> list[str]:
        return []

    async def delta(self, d: ChoiceDelta) -> list[str]:
        events = []
        for piece in d.pieces:
            if isinstance(piece, Preview):
                events.append(await self._event(f"{self.kind}.partial_image", piece, partial_image_index=piece.index))
            elif isinstance(piece, PNG):
                events.append(await self._event(f"{self.kind}.completed", piece, usage=self.ctx.usage.images(d.index)))
        return events

    def closing(self) -> list[str]:
        return []  # OpenAI sends nothing after the last image's event

    def failed(self, error: APIError) -> list[str]:
        return [f"event: error\ndata: {json.dumps(error_body(error))}\n\n"]
