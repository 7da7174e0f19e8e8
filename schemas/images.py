"""`POST /v1/images/generations` wire format (text to image)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import GuidanceFields, Text, WireModel, omitted_if_none


class ImageGenerationRequest(GuidanceFields):
    prompt: Text = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    response_format: Literal["b64_json", "url"] = "b64_json"
    size: str | None = None  # "auto" or a "WxH" the model writes (one native size; several for Lumina-mGPT)
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    # --- extensions ---
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    image_temperature: float | None = Field(None, ge=0.0, le=2.0)
    image_top_k: int | None = Field(None, ge=0)
    image_top_p: float | None = Field(None, gt=0.0, le=1.0)


class ImageData(WireModel):
    b64_json: str


class InputTokensDetails(WireModel):
    text_tokens: int
    image_tokens: int


class ImagesUsage(WireModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class ImagesResponse(WireModel):
    created: int
    data: list[ImageData]
    usage: ImagesUsage | None = omitted_if_none()
