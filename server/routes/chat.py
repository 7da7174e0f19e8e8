"""`POST /v1/chat/completions`: interleaved text and images in, text and generated images out."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.runner import ChameleonEngine
from schemas.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
    ImagePart,
    ImageURL,
    ResponseMessage,
    TextPart,
)
from schemas.common import CompletionTokensDetails, UsageInfo
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.generation import PNG, Piece, collect_choices, count_image_tokens, stream_deltas, until_disconnect
from server.prompt import build_chat_prompt
from server.sampling import sampling_params, span_args
from server.settings import Settings
from server.sse import sse, with_error_event

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def image_part(png: PNG) -> ImagePart:
    return ImagePart(type="image_url", image_url=ImageURL(url="data:image/png;base64," + base64.b64encode(png.data)
                                                          .decode()))


def message_content(pieces: list[Piece]) -> str | list[TextPart | ImagePart]:
    """A plain string for text-only replies; the ordered part list once an image is among them."""
    if all(isinstance(p, str) for p in pieces):
        return "".join(pieces)  # type: ignore[arg-type]
    return [TextPart(type="text", text=p) if isinstance(p, str) else image_part(p) for p in pieces]


def usage(engine: ChameleonEngine, req: ChatCompletionRequest, prompt_len: int, token_ids: list[int]) -> UsageInfo:
    details = (CompletionTokensDetails(image_tokens=count_image_tokens(engine, token_ids))
               if "image" in req.modalities else None)
    return UsageInfo(prompt_tokens=prompt_len, completion_tokens=len(token_ids),
                     total_tokens=prompt_len + len(token_ids), completion_tokens_details=details)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatCompletionRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ChatCompletionResponse | StreamingResponse:
    check_model(req.model, settings)
    prompt = await build_chat_prompt(engine, req.messages, settings, max_images=settings.max_images_per_request)
    params = sampling_params(req, engine, len(prompt.token_ids), req.max_new_tokens, end_of_turn=True,
                             extra_args=span_args(req.modalities, req))
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    log = request.state.log
    log.update(prompt_tokens=len(prompt.token_ids), images_in=prompt.num_images)
    if req.stream:
        events = _stream(req, engine, prompt.token_ids, params, request_id, created, settings.served_model_name, log)
        return StreamingResponse(with_error_event(events), media_type="text/event-stream")
    choices = await until_disconnect(request, collect_choices(engine, prompt.token_ids, params, request_id))
    log.update(completion_tokens=sum(len(c.token_ids) for c in choices),
               images_out=sum(isinstance(p, PNG) for c in choices for p in c.pieces))
    return ChatCompletionResponse(
        id=request_id, created=created, model=settings.served_model_name,
        choices=[ChatChoice(index=c.index, message=ResponseMessage(content=message_content(c.pieces)),
                            finish_reason=c.finish_reason, token_ids=c.token_ids if req.return_token_ids else None)
                 for c in choices],
        usage=usage(engine, req, len(prompt.token_ids), [t for c in choices for t in c.token_ids]),
        prompt_token_ids=prompt.token_ids if req.return_token_ids else None,
    )


async def _stream(req: ChatCompletionRequest, engine: ChameleonEngine, prompt_ids: list[int], params,
                  request_id: str, created: int, model: str, log: dict) -> AsyncIterator[str]:
    def chunk(choices: list[ChatChunkChoice], **extra) -> str:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, **extra))

    yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(req.n)],
                prompt_token_ids=prompt_ids if req.return_token_ids else None)
    generated: list[int] = []
    async for deltas in stream_deltas(engine, prompt_ids, params, request_id):
        for d in deltas:
            generated += d.token_ids
            log["completion_tokens"] = len(generated)
            log["images_out"] = log.get("images_out", 0) + sum(isinstance(p, PNG) for p in d.pieces)
            token_ids = d.token_ids if req.return_token_ids else None
            if not d.pieces and (d.finish_reason or token_ids):
                yield chunk([ChatChunkChoice(index=d.index, delta=DeltaMessage(content=""),
                                             finish_reason=d.finish_reason, token_ids=token_ids)])
            for i, piece in enumerate(d.pieces):  # an image is one chunk of its own, in order with the text
                last = i == len(d.pieces) - 1
                content = piece if isinstance(piece, str) else [image_part(piece)]
                yield chunk([ChatChunkChoice(index=d.index, delta=DeltaMessage(content=content),
                                             finish_reason=d.finish_reason if last else None,
                                             token_ids=token_ids if last else None)])
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], usage=usage(engine, req, len(prompt_ids), generated))
