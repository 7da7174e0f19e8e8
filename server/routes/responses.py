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
from collections.abc import AsyncIterator

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
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import BadRequest, as_api_error
from server.generation import PNG, collect_choices, count_image_tokens, in_format, stream_deltas, until_disconnect
from server.pipeline import Prepared, prepare_chat
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
                                      "image_temperature", "image_top_k", "image_top_p"},
                             exclude_unset=True))  # what is unset keeps the family's defaults, as on chat
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"input: {first['msg']}", param="input") from None


def _response(req: ResponsesRequest, chat: ChatCompletionRequest, response_id: str, created: int, model: str,
              output: list[OutputItem], status: str, usage: ResponseUsage | None = None,
              error: ResponseError | None = None) -> ResponseObject:
    done = status in ("completed", "incomplete")
    return ResponseObject(
        id=response_id, created_at=created, status=status, completed_at=int(time.time()) if done else None,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        instructions=req.instructions, max_output_tokens=req.max_output_tokens, model=model, output=output,
        parallel_tool_calls=req.parallel_tool_calls, metadata=req.metadata or {}, temperature=chat.temperature,
        tool_choice=req.tool_choice, tools=req.tools, top_p=chat.top_p, usage=usage, error=error)


def _usage(engine: ChameleonEngine, prompt_len: int, token_ids: list[int]) -> ResponseUsage:
    details = OutputTokensDetails(image_tokens=count_image_tokens(engine, token_ids))
    return ResponseUsage(input_tokens=prompt_len, output_tokens=len(token_ids),
                         total_tokens=prompt_len + len(token_ids), output_tokens_details=details)


@router.post("/responses", response_model=None)
async def create_response(
    req: ResponsesRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ResponseObject | StreamingResponse:
    check_model(req.model, settings)
    chat = as_chat_request(req)
    prepared = await prepare_chat(engine, settings, chat, f"resp_{uuid.uuid4().hex}", request.state.log,
                                  size_param="tools[0].size")
    response_id, created, model = prepared.request_id, int(time.time()), settings.served_model_name
    if req.stream:
        events = _stream(req, chat, engine, prepared, created, model, request.state.log)
        return StreamingResponse(events, media_type="text/event-stream")
    [choice] = await until_disconnect(request, collect_choices(engine, prepared))
    fmt = req.image_format
    pieces = [p if isinstance(p, str) else await in_format(p, fmt) for p in choice.pieces]
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    request.state.log.update(completion_tokens=len(choice.token_ids),
                             images_out=sum(isinstance(p, PNG) for p in choice.pieces))
    return _response(req, chat, response_id, created, model, OutputItems.of(pieces, status, fmt.output_format), status,
                     _usage(engine, len(prepared.prompt.token_ids), choice.token_ids))


async def _stream(req: ResponsesRequest, chat: ChatCompletionRequest, engine: ChameleonEngine, prepared: Prepared,
                  created: int, model: str, log: dict) -> AsyncIterator[str]:
    """The Responses event sequence; a failure mid-stream (the engine's death among them) ends it with one
    ``response.failed`` event, so that a cut reply never looks complete."""
    events, response_id, prompt_ids = ResponseEvents(req.image_format.output_format), prepared.request_id, \
        prepared.prompt.token_ids

    def lifecycle(kind: str, status: str, **fields) -> str:
        snapshot = _response(req, chat, response_id, created, model, events.output.items, status, **fields)
        return events.event(kind, response=snapshot.model_dump(mode="json"))

    generated: list[int] = []
    finish: str | None = None
    try:
        yield lifecycle("response.created", "in_progress")
        yield lifecycle("response.in_progress", "in_progress")
        async for deltas in stream_deltas(engine, prepared, req.partial_images):
            for d in deltas:
                generated += d.token_ids
                finish = d.finish_reason or finish
                log["completion_tokens"] = len(generated)
                log["images_out"] = log.get("images_out", 0) + sum(isinstance(p, PNG) for p in d.pieces)
                for piece in d.pieces:
                    for out in events.piece(piece if isinstance(piece, str) else await in_format(piece,
                                                                                                req.image_format)):
                        yield out
        status = "incomplete" if finish == "length" else "completed"
        for out in events.finish(status):
            yield out
        yield lifecycle(f"response.{status}", status, usage=_usage(engine, len(prompt_ids), generated))
    except Exception as exc:  # noqa: BLE001 -- the status line is sent already: report in-band
        err = as_api_error(exc)
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        yield lifecycle("response.failed", "failed", error=ResponseError(code=code, message=err.message))
