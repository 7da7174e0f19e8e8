"""`POST /v1/chat/completions`: interleaved text and images in, text and generated images out."""

from __future__ import annotations

import uuid

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
from server import driver
from server.context import RequestContext
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import APIError
from server.generation import ChoiceDelta
from server.image_shapes import DeltaShaper, message_fields
from server.logprobs import chat_logprobs
from server.pipeline import prepare_chat
from server.settings import Settings
from server.sse import DONE, error_events, sse

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


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
    ctx = await prepare_chat(engine, settings, req, f"chatcmpl-{uuid.uuid4().hex}", request.state.log)
    shape = req.image_output_format or settings.image_output_format
    if req.stream:
        return driver.stream(ctx, engine, _ChatStream(req, engine, ctx, shape), req.partial_images)
    choices = await driver.collect(request, ctx, engine)
    return ChatCompletionResponse(
        id=ctx.request_id, created=ctx.created, model=ctx.model,
        choices=[ChatChoice(index=c.index, message=ResponseMessage(**message_fields(c.pieces, shape)),
                            logprobs=_logprobs(engine, req, c.token_ids, c.logprobs, c.image_mask),
                            finish_reason=c.finish_reason,
                            token_ids=c.token_ids if req.return_token_ids else None)
                 for c in choices],
        usage=ctx.usage.chat(with_images="image" in req.modalities),
        prompt_token_ids=ctx.prompt.token_ids if req.return_token_ids else None,
    )


class _ChatStream:
    """Chat completion chunks: the role first, then each delta's text and images in order (an image is a chunk
    of its own), usage last where asked."""

    def __init__(self, req: ChatCompletionRequest, engine: ChameleonEngine, ctx: RequestContext, shape) -> None:
        self.req, self.engine, self.ctx = req, engine, ctx
        self.shapers = [DeltaShaper(shape) for _ in range(req.n)]

    def _chunk(self, choices: list[ChatChunkChoice], **extra) -> str:
        return sse(ChatCompletionChunk(id=self.ctx.request_id, created=self.ctx.created, model=self.ctx.model,
                                       choices=choices, **extra))

    def opening(self) -> list[str]:
        roles = [ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(self.req.n)]
        return [self._chunk(roles, prompt_token_ids=self.ctx.prompt.token_ids if self.req.return_token_ids else None)]

    async def delta(self, d: ChoiceDelta) -> list[str]:
        token_ids = d.token_ids if self.req.return_token_ids else None
        logprobs = _logprobs(self.engine, self.req, d.token_ids, d.logprobs, d.image_mask)
        chunks = []
        if not d.pieces and (d.finish_reason or token_ids or (logprobs and logprobs.content)):
            chunks.append(self._chunk([ChatChunkChoice(index=d.index, delta=DeltaMessage(content=""), logprobs=logprobs,
                                                       finish_reason=d.finish_reason, token_ids=token_ids)]))
        for i, piece in enumerate(d.pieces):  # an image is one chunk of its own, in order with the text
            last = i == len(d.pieces) - 1
            delta = self.shapers[d.index].delta(piece)
            if delta is not None:
                chunks.append(self._chunk([ChatChunkChoice(index=d.index, delta=delta,
                                                           logprobs=logprobs if last else None,
                                                           finish_reason=d.finish_reason if last else None,
                                                           token_ids=token_ids if last else None)]))
        return chunks

    def closing(self) -> list[str]:
        usage = self.ctx.usage.chat(with_images="image" in self.req.modalities)
        asked = self.req.stream_options and self.req.stream_options.include_usage
        return [self._chunk([], usage=usage), DONE] if asked else [DONE]

    def failed(self, error: APIError) -> list[str]:
        return error_events(error)
