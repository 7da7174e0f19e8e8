"""`POST /v1/images/generations`: text to image, ``b64_json`` PNGs."""

from __future__ import annotations

import base64
import time
import uuid

from fastapi import APIRouter, Depends, Request

from engine.frontend.client import ChameleonEngine
from schemas.chat import ChatCompletionRequest, ChatMessage
from schemas.images import ImageData, ImageGenerationRequest, ImagesResponse, ImagesUsage, InputTokensDetails
from server.deps import check_model, get_engine, get_settings, require_api_key
from server.errors import APIError, BadRequest
from server.generation import PNG, collect_choices, until_disconnect
from server.pipeline import prepare_chat
from server.settings import Settings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/images/generations")
async def generate_images(
    req: ImageGenerationRequest, request: Request,
    settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ImagesResponse:
    if req.model is not None:
        check_model(req.model, settings)
    if req.response_format != "b64_json":
        raise BadRequest("only response_format 'b64_json' is supported", param="response_format")
    # The prompt is one user turn, exactly as a chat request with modalities ["image"] would send it; fields
    # left unset stay unset, so that the family's defaults apply as on chat.
    chat = ChatCompletionRequest(model=settings.served_model_name, n=req.n, modalities=["image"],
                                 messages=[ChatMessage(role="user", content=req.prompt)], image_size=req.size,
                                 **req.model_dump(include={"seed", "image_temperature", "image_top_k", "image_top_p",
                                                           "cfg_scale", "negative_prompt"}, exclude_unset=True))
    prepared = await prepare_chat(engine, settings, chat, f"img-{uuid.uuid4().hex}", request.state.log,
                                  size_param="size")
    choices = await until_disconnect(request, collect_choices(engine, prepared))
    pngs = [p for c in choices for p in c.pieces if isinstance(p, PNG)]
    if len(pngs) != req.n:  # the grammar forces a full span within max_tokens: this is a bug if it happens
        raise APIError(f"generated {len(pngs)} of {req.n} images")
    output_tokens, prompt = sum(len(c.token_ids) for c in choices), prepared.prompt
    request.state.log.update(completion_tokens=output_tokens, images_out=len(pngs))
    return ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=base64.b64encode(p.data).decode()) for p in pngs],
        usage=ImagesUsage(input_tokens=len(prompt.token_ids), output_tokens=output_tokens,
                          total_tokens=len(prompt.token_ids) + output_tokens,
                          input_tokens_details=InputTokensDetails(text_tokens=len(prompt.token_ids), image_tokens=0)),
    )
