"""`POST /v1/completions`: text prompts (or token ids), streamed or whole."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.frontend.client import ChameleonEngine
from schemas.common import UsageInfo
from schemas.completions import CompletionChoice, CompletionRequest, CompletionResponse
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import BadRequest
from server.generation import collect_choices, stream_deltas, until_disconnect
from server.pipeline import Prepared, prepare_text
from server.settings import Settings
from server.sse import sse, with_error_event

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/completions", response_model=None)
async def completions(
    req: CompletionRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> CompletionResponse | StreamingResponse:
    check_model(req.model, settings)
    if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str):
        if len(req.prompt) != 1:
            raise BadRequest("this server takes one prompt per request", param="prompt")
        prompt_text: str | list[int] = req.prompt[0]
    else:
        prompt_text = req.prompt
    log = request.state.log
    prepared = await prepare_text(engine, settings, req, prompt_text, f"cmpl-{uuid.uuid4().hex}", log)
    created, prompt_ids = int(time.time()), prepared.prompt.token_ids
    echo = prompt_text if req.echo and isinstance(prompt_text, str) else ""
    if req.stream:
        events = _stream(req, engine, prepared, created, settings.served_model_name, echo)
        return StreamingResponse(with_error_event(events), media_type="text/event-stream")
    choices = await until_disconnect(request, collect_choices(engine, prepared))
    completion_tokens = sum(len(c.token_ids) for c in choices)
    request.state.log["completion_tokens"] = completion_tokens
    return CompletionResponse(
        id=prepared.request_id, created=created, model=settings.served_model_name,
        choices=[CompletionChoice(index=c.index, text=echo + "".join(c.pieces), finish_reason=c.finish_reason,
                                  token_ids=c.token_ids if req.return_token_ids else None) for c in choices],
        usage=UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                        total_tokens=len(prompt_ids) + completion_tokens),
        prompt_token_ids=prompt_ids if req.return_token_ids else None,
    )


async def _stream(req: CompletionRequest, engine: ChameleonEngine, prepared: Prepared, created: int, model: str,
                  echo: str) -> AsyncIterator[str]:
    prompt_ids = prepared.prompt.token_ids

    def chunk(choices: list[CompletionChoice], **extra) -> str:
        return sse(CompletionResponse(id=prepared.request_id, created=created, model=model, choices=choices,
                                      **extra))

    completion_tokens, first = 0, {i: echo for i in range(req.n)}
    prompt_once = prompt_ids if req.return_token_ids else None
    async for deltas in stream_deltas(engine, prepared):
        completion_tokens += sum(len(d.token_ids) for d in deltas)
        yield chunk([CompletionChoice(index=d.index, text=first.pop(d.index, "") + "".join(d.pieces),
                                      finish_reason=d.finish_reason,
                                      token_ids=d.token_ids if req.return_token_ids else None) for d in deltas],
                    prompt_token_ids=prompt_once)
        prompt_once = None
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], usage=UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                                        total_tokens=len(prompt_ids) + completion_tokens))
