"""`POST /v1/responses`: OpenAI's Responses API over the chat pipeline, stateless.

The request becomes a chat request (same prompt building, sampling and generation code), and the
reply's pieces become output items in order: text runs as ``message`` items, each image as an
``image_generation_call`` item. Nothing is stored: ``store`` is accepted (the reply says
``store: false``) and ``previous_response_id`` is refused, so a conversation is sent whole in ``input``.
The image tool's ``size`` picks the images' size where the checkpoint writes several (Lumina-mGPT), as
``size`` does on /v1/images/generations. A streamed reply sends the image tool's ``partial_images``
previews of each image as ``response.image_generation_call.partial_image`` events before the image's
item is done.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from engine.frontend.client import ChameleonEngine
from schemas.chat import ChatCompletionRequest, ChatMessage, ImagePart, ImageURL, TextPart
from schemas.responses import (
    ImageGenerationCallInput,
    IncompleteDetails,
    InputImage,
    OutputItem,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from server import driver
from server.context import RequestContext
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import APIError, BadRequest
from server.generation import ChoiceDelta, in_format
from server.pipeline import prepare_chat
from server.response_items import OutputItems, ResponseEvents
from server.settings import Settings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _chat_message(item) -> ChatMessage:
    if isinstance(item, ImageGenerationCallInput):
        url = "data:image/png;base64," + item.result
        return ChatMessage(role="assistant", content=[ImagePart(type="image_url", image_url=ImageURL(url=url))])
    if isinstance(item.content, str):
        return ChatMessage(role=item.role, content=item.content)
    return ChatMessage(role=item.role, content=[
        ImagePart(type="image_url", image_url=ImageURL(url=p.image_url)) if isinstance(p, InputImage)
        else TextPart(type="text", text=p.text) for p in item.content])


def as_chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that generates this response: instructions first, then the input items."""
    if req.previous_response_id is not None:
        raise BadRequest("this server is stateless and stores no responses: send the whole conversation in "
                         "'input' instead of previous_response_id", param="previous_response_id",
                         code="unsupported_parameter")
    messages = [ChatMessage(role="system", content=req.instructions)] if req.instructions else []
    messages += ([ChatMessage(role="user", content=req.input)] if isinstance(req.input, str)
                 else [_chat_message(item) for item in req.input])
    sampling = {k: v for k, v in req.model_dump(include={"temperature", "top_p"}).items() if v is not None}
    try:
        return ChatCompletionRequest(
            model=req.model, messages=messages, max_completion_tokens=req.max_output_tokens, modalities=req.modalities,
            image_size=req.image_size, **sampling,
            **req.model_dump(include={"seed", "top_k", "logit_bias", "repetition_penalty", "user",
                                      "image_temperature", "image_top_k", "image_top_p", "jacobi_window"},
                             exclude_unset=True))  # what is unset keeps the family's defaults, as on chat
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"input: {first['msg']}", param="input") from None


def _response(req: ResponsesRequest, chat: ChatCompletionRequest, ctx: RequestContext, output: list[OutputItem],
              status: str, usage: ResponseUsage | None = None, error: ResponseError | None = None) -> ResponseObject:
    done = status in ("completed", "incomplete")
    return ResponseObject(
        id=ctx.request_id, created_at=ctx.created, status=status, completed_at=int(time.time()) if done else None,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        instructions=req.instructions, max_output_tokens=req.max_output_tokens, model=ctx.model, output=output,
        parallel_tool_calls=req.parallel_tool_calls, metadata=req.metadata or {}, temperature=chat.temperature,
        tool_choice=req.tool_choice, tools=req.tools, top_p=chat.top_p, usage=usage, error=error)


@router.post("/responses", response_model=None)
async def create_response(
    req: ResponsesRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ResponseObject | StreamingResponse:
    check_model(req.model, settings)
    chat = as_chat_request(req)
    ctx = await prepare_chat(engine, settings, chat, f"resp_{uuid.uuid4().hex}", request.state.log,
                             size_param="tools[0].size")
    if req.stream:
        return driver.stream(ctx, engine, _ResponseStream(req, chat, ctx), req.partial_images)
    [choice] = await driver.collect(request, ctx, engine)
    fmt = req.image_format
    pieces = [p if isinstance(p, str) else await in_format(p, fmt) for p in choice.pieces]
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    return _response(req, chat, ctx, OutputItems.of(pieces, status, fmt.output_format), status, ctx.usage.responses())


class _ResponseStream:
    """The Responses event sequence; a failure mid-stream (the engine's death among them) ends it with one
    ``response.failed`` event."""

    def __init__(self, req: ResponsesRequest, chat: ChatCompletionRequest, ctx: RequestContext) -> None:
        self.req, self.chat, self.ctx = req, chat, ctx
        self.events = ResponseEvents(req.image_format.output_format)
        self.finish: str | None = None

    def _lifecycle(self, kind: str, status: str, **fields) -> str:
        snapshot = _response(self.req, self.chat, self.ctx, self.events.output.items, status, **fields)
        return self.events.event(kind, response=snapshot.model_dump(mode="json"))

    def opening(self) -> list[str]:
        return [self._lifecycle("response.created", "in_progress"),
                self._lifecycle("response.in_progress", "in_progress")]

    async def delta(self, d: ChoiceDelta) -> list[str]:
        self.finish = d.finish_reason or self.finish
        out = []
        for piece in d.pieces:
            out += self.events.piece(piece if isinstance(piece, str) else await in_format(piece, self.req.image_format))
        return out

    def closing(self) -> list[str]:
        status = "incomplete" if self.finish == "length" else "completed"
        return [*self.events.finish(status),
                self._lifecycle(f"response.{status}", status, usage=self.ctx.usage.responses())]

    def failed(self, error: APIError) -> list[str]:
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        return [self._lifecycle("response.failed", "failed", error=ResponseError(code=code, message=error.message))]
