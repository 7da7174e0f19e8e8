"""`POST /v1/chat/completions`: interleaved text and images in, text and generated images out."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.frontend.client import ChameleonEngine
from schemas.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    DeltaMessage,
    ResponseMessage,
)
from schemas.common import CompletionTokensDetails, UsageInfo
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.generation import PNG, collect_choices, count_image_tokens, stream_deltas, until_disconnect
from server.image_shapes import DeltaShaper, message_fields
from server.logprobs import chat_logprobs
from server.pipeline import Prepared, prepare_chat
from server.settings import Settings
from server.sse import sse, with_error_event

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def usage(engine: ChameleonEngine, req: ChatCompletionRequest, prompt_len: int,
          choices: list[list[int]]) -> UsageInfo:
    """Usage of a reply whose choices wrote ``choices`` (token ids, one list per choice)."""
    details = (CompletionTokensDetails(image_tokens=count_image_tokens(engine, *choices))
               if "image" in req.modalities else None)
    completion = sum(len(ids) for ids in choices)
    return UsageInfo(prompt_tokens=prompt_len, completion_tokens=completion,
                     total_tokens=prompt_len + completion, completion_tokens_details=details)


def _logprobs(engine: ChameleonEngine, req: ChatCompletionRequest, token_ids: list[int], positions,
              image_mask: list[bool]) -> ChoiceLogprobs | None:
    return chat_logprobs(engine, token_ids, positions or [], req.top_logprobs or 0, image_mask) \
        if req.logprobs else None


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatCompletionRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ChatCompletionResponse | StreamingResponse:
    check_model(req.model, settings)
    log = request.state.log
    prepared = await prepare_chat(engine, settings, req, f"chatcmpl-{uuid.uuid4().hex}", log)
    created, prompt = int(time.time()), prepared.prompt
    shape = req.image_output_format or settings.image_output_format
    if req.stream:
        events = _stream(req, engine, prepared, created, settings.served_model_name, log, shape)
        return StreamingResponse(with_error_event(events), media_type="text/event-stream")
    choices = await until_disconnect(request, collect_choices(engine, prepared))
    log.update(completion_tokens=sum(len(c.token_ids) for c in choices),
               images_out=sum(isinstance(p, PNG) for c in choices for p in c.pieces))
    return ChatCompletionResponse(
        id=prepared.request_id, created=created, model=settings.served_model_name,
        choices=[ChatChoice(index=c.index, message=ResponseMessage(**message_fields(c.pieces, shape)),
                            logprobs=_logprobs(engine, req, c.token_ids, c.logprobs, c.image_mask),
                            finish_reason=c.finish_reason,
                            token_ids=c.token_ids if req.return_token_ids else None)
                 for c in choices],
        usage=usage(engine, req, len(prompt.token_ids), [c.token_ids for c in choices]),
        prompt_token_ids=prompt.token_ids if req.return_token_ids else None,
    )


async def _stream(req: ChatCompletionRequest, engine: ChameleonEngine, prepared: Prepared, created: int, model: str,
                  log: dict, shape) -> AsyncIterator[str]:
    prompt_ids = prepared.prompt.token_ids

    def chunk(choices: list[ChatChunkChoice], **extra) -> str:
        return sse(ChatCompletionChunk(id=prepared.request_id, created=created, model=model, choices=choices,
                                       **extra))

    yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(req.n)],
                prompt_token_ids=prompt_ids if req.return_token_ids else None)
    generated: list[list[int]] = [[] for _ in range(req.n)]
    shapers = [DeltaShaper(shape) for _ in range(req.n)]
    async for deltas in stream_deltas(engine, prepared, req.partial_images):
        for d in deltas:
            generated[d.index] += d.token_ids
            log["completion_tokens"] = sum(len(ids) for ids in generated)
            log["images_out"] = log.get("images_out", 0) + sum(isinstance(p, PNG) for p in d.pieces)
            token_ids = d.token_ids if req.return_token_ids else None
            logprobs = _logprobs(engine, req, d.token_ids, d.logprobs, d.image_mask)
            if not d.pieces and (d.finish_reason or token_ids or (logprobs and logprobs.content)):
                yield chunk([ChatChunkChoice(index=d.index, delta=DeltaMessage(content=""), logprobs=logprobs,
                                             finish_reason=d.finish_reason, token_ids=token_ids)])
            for i, piece in enumerate(d.pieces):  # an image is one chunk of its own, in order with the text
                last = i == len(d.pieces) - 1
                delta = shapers[d.index].delta(piece)
                if delta is None:
                    continue
                yield chunk([ChatChunkChoice(index=d.index, delta=delta,
                                             logprobs=logprobs if last else None,
                                             finish_reason=d.finish_reason if last else None,
                                             token_ids=token_ids if last else None)])
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], usage=usage(engine, req, len(prompt_ids), generated))
