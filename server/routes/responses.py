"""`POST /v1/responses`: OpenAI's Responses API over the chat pipeline, stateless.

The request becomes a chat request (same prompt building, sampling and generation code), and the
reply's pieces become output items in order: text runs as ``message`` items, each image as an
``image_generation_call`` item. Nothing is stored: ``store`` is accepted (the reply says
``store: false``) and ``previous_response_id`` is refused, so a conversation is sent whole in ``input``.
Partial image previews (the tool's ``partial_images``) are accepted and not sent yet.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from engine.runner import ChameleonEngine
from schemas.chat import ChatCompletionRequest, ChatMessage, ImagePart, ImageURL, TextPart
from schemas.responses import (
    ImageGenerationCall,
    ImageGenerationCallInput,
    IncompleteDetails,
    InputImage,
    MessageItem,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import BadRequest, as_api_error
from server.generation import PNG, Piece, collect_choices, count_image_tokens, stream_deltas, until_disconnect
from server.prompt import build_chat_prompt
from server.sampling import sampling_params, span_args
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
            **sampling, **req.model_dump(include={"seed", "top_k", "logit_bias", "repetition_penalty", "user",
                                                  "image_temperature", "image_top_k", "image_top_p"}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"input: {first['msg']}", param="input") from None


class _Items:
    """Pieces -> output items, in order; consecutive text pieces share one message item."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []

    def add_text(self, text: str) -> tuple[MessageItem, bool]:
        """The message item the text joins, and whether it was opened by this text."""
        last = self.items[-1] if self.items else None
        if isinstance(last, MessageItem) and last.status == "in_progress":
            last.content[0].text += text
            return last, False
        item = MessageItem(id=f"msg_{uuid.uuid4().hex}", status="in_progress", content=[OutputText(text=text)])
        self.items.append(item)
        return item, True

    def add_image(self, png: PNG) -> ImageGenerationCall:
        self.close_text()
        item = ImageGenerationCall(id=f"ig_{uuid.uuid4().hex}", status="completed",
                                   result=base64.b64encode(png.data).decode())
        self.items.append(item)
        return item

    def close_text(self, status: str = "completed") -> MessageItem | None:
        last = self.items[-1] if self.items else None
        if isinstance(last, MessageItem) and last.status == "in_progress":
            last.status = status  # type: ignore[assignment]
            return last
        return None


def _response(req: ResponsesRequest, chat: ChatCompletionRequest, response_id: str, created: int, model: str,
              output: list[OutputItem], status: str, usage: ResponseUsage | None = None) -> ResponseObject:
    done = status in ("completed", "incomplete")
    return ResponseObject(
        id=response_id, created_at=created, status=status, completed_at=int(time.time()) if done else None,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        instructions=req.instructions, max_output_tokens=req.max_output_tokens, model=model, output=output,
        parallel_tool_calls=req.parallel_tool_calls, metadata=req.metadata or {}, temperature=chat.temperature,
        tool_choice=req.tool_choice, tools=req.tools, top_p=chat.top_p, usage=usage)


def _usage(engine: ChameleonEngine, prompt_len: int, token_ids: list[int]) -> ResponseUsage:
    return ResponseUsage(input_tokens=prompt_len, output_tokens=len(token_ids), total_tokens=prompt_len + len(token_ids),
                         output_tokens_details=OutputTokensDetails(image_tokens=count_image_tokens(engine, token_ids)))


@router.post("/responses", response_model=None)
async def create_response(
    req: ResponsesRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ResponseObject | StreamingResponse:
    check_model(req.model, settings)
    chat = as_chat_request(req)
    prompt = await build_chat_prompt(engine, chat.messages, max_images=settings.max_images_per_request,
                                     max_pixels=settings.max_image_pixels, chat_template=settings.chat_template)
    params = sampling_params(chat, engine, len(prompt.token_ids), chat.max_new_tokens, end_of_turn=True,
                             extra_args=span_args(chat.modalities, chat))
    response_id, created, model = f"resp_{uuid.uuid4().hex}", int(time.time()), settings.served_model_name
    request.state.log.update(prompt_tokens=len(prompt.token_ids), images_in=prompt.num_images)
    if req.stream:
        events = _stream(req, chat, engine, prompt.token_ids, params, response_id, created, model, request.state.log)
        return StreamingResponse(events, media_type="text/event-stream")
    [choice] = await until_disconnect(request, collect_choices(engine, prompt.token_ids, params, response_id))
    items = _Items()
    for piece in choice.pieces or [""]:  # an empty reply is still one (empty) message, as OpenAI answers
        items.add_text(piece) if isinstance(piece, str) else items.add_image(piece)
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    items.close_text(status)
    request.state.log.update(completion_tokens=len(choice.token_ids),
                             images_out=sum(isinstance(p, PNG) for p in choice.pieces))
    return _response(req, chat, response_id, created, model, items.items, status,
                     _usage(engine, len(prompt.token_ids), choice.token_ids))


async def _stream(req: ResponsesRequest, chat: ChatCompletionRequest, engine: ChameleonEngine, prompt_ids: list[int],
                  params, response_id: str, created: int, model: str, log: dict) -> AsyncIterator[str]:
    """The Responses event sequence; a failure mid-stream ends it with one ``error`` event."""
    sequence = iter(range(1 << 62))

    def event(kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    def lifecycle(kind: str, status: str, **usage) -> str:
        snapshot = _response(req, chat, response_id, created, model, items.items, status, **usage)
        return event(kind, response=snapshot.model_dump(mode="json"))

    def text_done(item: MessageItem, index: int) -> list[str]:
        part = item.content[0].model_dump()
        return [event("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                      text=part["text"], logprobs=[]),
                event("response.content_part.done", item_id=item.id, output_index=index, content_index=0, part=part),
                event("response.output_item.done", output_index=index, item=item.model_dump())]

    items = _Items()
    generated: list[int] = []
    finish: str | None = None
    try:
        yield lifecycle("response.created", "in_progress")
        yield lifecycle("response.in_progress", "in_progress")
        async for deltas in stream_deltas(engine, prompt_ids, params, response_id):
            for d in deltas:
                generated += d.token_ids
                finish = d.finish_reason or finish
                log["completion_tokens"] = len(generated)
                for piece in d.pieces:
                    for out in _piece_events(items, piece, event, text_done):
                        yield out
                    log["images_out"] = log.get("images_out", 0) + isinstance(piece, PNG)
        if not items.items:  # an empty reply is still one (empty) message
            for out in _piece_events(items, "", event, text_done):
                yield out
        status = "incomplete" if finish == "length" else "completed"
        if (last := items.close_text(status)) is not None:
            for out in text_done(last, len(items.items) - 1):
                yield out
        usage = _usage(engine, len(prompt_ids), generated)
        yield lifecycle(f"response.{status}", status, usage=usage)
    except Exception as exc:  # noqa: BLE001 -- the status line is sent already: report in-band
        err = as_api_error(exc)
        yield event("error", code=err.code, message=err.message, param=err.param)


def _piece_events(items: _Items, piece: Piece, event, text_done) -> list[str]:
    """Events for one piece: a text delta (opening a message item first if needed), or a whole image item."""
    if isinstance(piece, str):
        item, opened = items.add_text(piece)
        index = len(items.items) - 1
        out = []
        if opened:
            empty = item.model_copy(update={"content": []}).model_dump()
            out += [event("response.output_item.added", output_index=index, item=empty),
                    event("response.content_part.added", item_id=item.id, output_index=index, content_index=0,
                          part=OutputText(text="").model_dump())]
        return out + [event("response.output_text.delta", item_id=item.id, output_index=index, content_index=0,
                            delta=piece, logprobs=[])] * bool(piece)
    closed = items.close_text()
    out = text_done(closed, len(items.items) - 1) if closed is not None else []
    image = items.add_image(piece)
    index = len(items.items) - 1
    pending = image.model_copy(update={"status": "in_progress", "result": None}).model_dump()
    return out + [event("response.output_item.added", output_index=index, item=pending),
                  event("response.image_generation_call.in_progress", output_index=index, item_id=image.id),
                  event("response.image_generation_call.generating", output_index=index, item_id=image.id),
                  event("response.image_generation_call.completed", output_index=index, item_id=image.id),
                  event("response.output_item.done", output_index=index, item=image.model_dump())]
