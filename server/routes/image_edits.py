"""`POST /v1/images/edits`: OpenAI's multipart form mapped onto the images reply of ``server/routes/images.py``
(an edit's user turn holds its input images, then the instruction), with an optional mask."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from engine.frontend.client import ChameleonEngine
from schemas.chat import ImagePart, ImageURL, TextPart
from schemas.images import ImageEditRequest, ImagesResponse
from server.deps import get_engine, get_settings, require_api_key
from server.edit_masks import mask_cells
from server.errors import BadRequest
from server.routes.images import images_reply
from server.settings import Settings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/images/edits", response_model=None)
async def edit_images(
    request: Request, settings: Settings = Depends(get_settings), engine: ChameleonEngine = Depends(get_engine),
) -> ImagesResponse | StreamingResponse:
    """Multipart form, as OpenAI takes it: ``image`` (or several ``image[]``), ``prompt``, an optional ``mask``,
    and the fields of /v1/images/generations.

    With a mask (a PNG the size of the first image, whose fully transparent pixels mark the area to change), the
    reply is that image with only the code cells under the mask written anew: every other cell is forced to
    the input's own code, so the untouched area decodes to the input's VQGAN reconstruction. The model writes
    in raster order, so a changed cell sees the kept cells before it, not those after it.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("send the edit as multipart/form-data (image files and form fields)", param="image")
    form = await request.form()
    files = [f for key in ("image", "image[]") for f in form.getlist(key) if isinstance(f, UploadFile)]
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in ("image", "image[]", "mask")}
    try:
        req = ImageEditRequest(**fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if not files:
        raise BadRequest("image: at least one image file is required", param="image")
    uploads = [(f.content_type or "", await f.read()) for f in files]
    mask = form.get("mask")
    editable = await mask_cells(engine, settings, uploads[0][1], await mask.read()) \
        if isinstance(mask, UploadFile) else None
    images = [ImagePart(type="image_url", image_url=ImageURL(url=_data_url(*u))) for u in uploads]
    return await images_reply(req, [*images, TextPart(type="text", text=req.prompt)], "image_edit", request,
                              settings, engine, editable)


def _data_url(content_type: str, data: bytes) -> str:
    """An uploaded file as the data URL the chat pipeline reads (its decoding checks are chat's)."""
    kind = content_type if content_type.startswith("image/") else "image/png"
    return f"data:{kind};base64," + base64.b64encode(data).decode()
