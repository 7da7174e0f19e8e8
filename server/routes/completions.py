"""`POST /v1/completions`: text prompts (or token ids), streamed or whole."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.frontend.client import ChameleonEngine
from schemas.completions import CompletionChoice, CompletionRequest, CompletionResponse
from server import driver
from server.context import RequestContext
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import APIError, BadRequest
from server.generation import ChoiceDelta
from server.pipeline import prepare_text
from server.settings import Settings
from server.sse import DONE, error_events, sse

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
    ctx = await prepare_text(engine, settings, req, prompt_text, f"cmpl-{uuid.uuid4().hex}", request.state.log)
    echo = prompt_text if req.echo and isinstance(prompt_text, str) else ""
    if req.stream:
        return driver.stream(ctx, engine, _CompletionStream(req, ctx, echo))
    choices = await driver.collect(request, ctx, engine)
    return CompletionResponse(
        id=ctx.request_id, created=ctx.created, model=ctx.model,
        choices=[CompletionChoice(index=c.index, text=echo + "".join(c.pieces), finish_reason=c.finish_reason,
                                  token_ids=c.token_ids if req.return_token_ids else None) for c in choices],
        usage=ctx.usage.completions(),
        prompt_token_ids=ctx.prompt.token_ids if req.return_token_ids else None,
    )


class _CompletionStream:
    """Completion chunks: each delta's text (the echoed prompt before a choice's first), usage last where asked."""

    def __init__(self, req: CompletionRequest, ctx: RequestContext, echo: str) -> None:
        self.req, self.ctx = req, ctx
        self.first = {i: echo for i in range(req.n)}  # text each choice's first chunk starts with
        self.prompt_once = ctx.prompt.token_ids if req.return_token_ids else None

    def _chunk(self, choices: list[CompletionChoice], **extra) -> str:
        return sse(CompletionResponse(id=self.ctx.request_id, created=self.ctx.created, model=self.ctx.model,
                                      choices=choices, **extra))

    def opening(self) -> list[str]:
        return []

    async def delta(self, d: ChoiceDelta) -> list[str]:
        choice = CompletionChoice(index=d.index, text=self.first.pop(d.index, "") + "".join(d.pieces),
                                  finish_reason=d.finish_reason,
                                  token_ids=d.token_ids if self.req.return_token_ids else None)
        chunk = self._chunk([choice], prompt_token_ids=self.prompt_once)
        self.prompt_once = None
        return [chunk]

    def closing(self) -> list[str]:
        asked = self.req.stream_options and self.req.stream_options.include_usage
        return [self._chunk([], usage=self.ctx.usage.completions()), DONE] if asked else [DONE]

    def failed(self, error: APIError) -> list[str]:
        return error_events(error)
