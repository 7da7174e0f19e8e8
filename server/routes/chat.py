"""`POST /v1/chat/completions`: interleaved text and image input, streamed or whole."""

from __future__ import annotations

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
    ResponseMessage,
)
from schemas.common import UsageInfo
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.generation import collect_choices, stream_deltas, until_disconnect
from server.prompt import build_chat_prompt
from server.sampling import sampling_params
from server.settings import Settings
from server.sse import sse, with_error_event

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatCompletionRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ChatCompletionResponse | StreamingResponse:
    check_model(req.model, settings)
    prompt = await build_chat_prompt(engine, req.messages, max_images=settings.max_images_per_request,
                                     max_pixels=settings.max_image_pixels, chat_template=settings.chat_template)
    params = sampling_params(req, engine, len(prompt.token_ids), req.max_new_tokens, end_of_turn=True)
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        events = _stream(req, engine, prompt.token_ids, params, request_id, created, settings.served_model_name)
        return StreamingResponse(with_error_event(events), media_type="text/event-stream")
    choices = await until_disconnect(request, collect_choices(engine, prompt.token_ids, params, request_id))
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return ChatCompletionResponse(
        id=request_id, created=created, model=settings.served_model_name,
        choices=[ChatChoice(index=c.index, message=ResponseMessage(content=c.text), finish_reason=c.finish_reason,
                            token_ids=c.token_ids if req.return_token_ids else None) for c in choices],
        usage=UsageInfo(prompt_tokens=len(prompt.token_ids), completion_tokens=completion_tokens,
                        total_tokens=len(prompt.token_ids) + completion_tokens),
        prompt_token_ids=prompt.token_ids if req.return_token_ids else None,
    )


async def _stream(req: ChatCompletionRequest, engine: ChameleonEngine, prompt_ids: list[int], params,
                  request_id: str, created: int, model: str) -> AsyncIterator[str]:
    def chunk(choices: list[ChatChunkChoice], **extra) -> str:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, **extra))

    yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(req.n)],
                prompt_token_ids=prompt_ids if req.return_token_ids else None)
    completion_tokens = 0
    async for deltas in stream_deltas(engine, prompt_ids, params, request_id):
        completion_tokens += sum(len(d.token_ids) for d in deltas)
        yield chunk([ChatChunkChoice(index=d.index, delta=DeltaMessage(content=d.text), finish_reason=d.finish_reason,
                                     token_ids=d.token_ids if req.return_token_ids else None) for d in deltas])
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], usage=UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                                        total_tokens=len(prompt_ids) + completion_tokens))
