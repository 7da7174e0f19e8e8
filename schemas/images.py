"""`POST /v1/images/generations` and `POST /v1/images/edits` wire format, and their stream events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.common import GuidanceFields, JacobiWindow, Text, UsageModel, WireModel, omitted_if_none

OutputFormat = Literal["png", "jpeg", "webp"]
# "standard" and "hd" are dall-e-3's values, accepted as the schema allows; the event schemas know only the rest.
Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]
Background = Literal["auto", "opaque", "transparent"]
# Sizes OpenAI's response and event schemas enumerate; any other size the model writes is reported as "auto".
SCHEMA_SIZES = ("1024x1024", "1024x1536", "1536x1024")


class ImageFormatFields(WireModel):
    """How the written images are encoded, shared by both routes and Responses' image tool (OpenAI's fields and
    defaults).

    ``quality`` is accepted and reported back but changes nothing: the model has one way to write an image,
    and its sampling is set by the image fields (the checkpoint family's defaults unless the request sets them).
    ``background`` ``transparent`` is refused: the VQGAN decodes RGB, with no alpha channel to be transparent in.
    """

    output_format: OutputFormat = "png"
    output_compression: int = Field(100, ge=0, le=100)  # jpeg and webp quality; png is lossless
    background: Background = "auto"
    quality: Quality = "auto"

    @model_validator(mode="after")
    def _opaque(self) -> ImageFormatFields:
        if self.background == "transparent":
            raise ValueError("background 'transparent' is not possible: this model's image decoder writes RGB "
                             "with no alpha channel; use 'auto' or 'opaque'")
        return self


class ImageOutputFields(ImageFormatFields):
    """The images routes' output fields: the format, and streaming with previews."""

    stream: bool = False
    partial_images: int = Field(0, ge=0, le=3)  # previews per image, streams only

    @model_validator(mode="after")
    def _previews_need_a_stream(self) -> ImageOutputFields:
        if self.partial_images and not self.stream:
            raise ValueError("partial_images needs stream: true (previews exist only in a stream)")
        return self


class ImageSamplingFields(GuidanceFields):
    """Extensions of both routes: the seed and the image sampling fields, as on chat."""

    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    image_temperature: float | None = Field(None, ge=0.0, le=2.0)
    image_top_k: int | None = Field(None, ge=0)
    image_top_p: float | None = Field(None, gt=0.0, le=1.0)
    jacobi_window: JacobiWindow | None = None
    return_token_ids: bool = False  # each image's token ids beside it (as chat's extension does)


class ImageRequest(ImageSamplingFields, ImageOutputFields):
    """The fields both images routes take."""

    prompt: Text = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    response_format: Literal["b64_json", "url"] = "b64_json"
    size: str | None = None  # "auto" or a "WxH" the model writes (a list, or Emu3's rule: server/pipeline.py)
    user: str | None = None


class ImageGenerationRequest(ImageRequest):
    style: str | None = None


class ImageData(WireModel):
    b64_json: str
    token_ids: list[int] | None = omitted_if_none()  # extension: with return_token_ids

class InputTokensDetails(WireModel):
    text_tokens: int
    image_tokens: int


class ImagesUsage(UsageModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class ImagesResponse(WireModel):
    created: int
    data: list[ImageData]
    background: Literal["opaque"] | None = omitted_if_none()
    output_format: OutputFormat | None = omitted_if_none()
    size: str | None = omitted_if_none()  # one of SCHEMA_SIZES, else omitted
    quality: Literal["low", "medium", "high"] | None = omitted_if_none()
    usage: ImagesUsage | None = omitted_if_none()
    image_size: str  # extension: the "WxH" written, whatever the request asked and the schema's enum can say


class ImageStreamEvent(WireModel):
    """``image_generation.*`` / ``image_edit.*`` events: ``partial_image`` with its index, ``completed`` with
    the usage of the image's own tokens."""

    type: str
    b64_json: str
    created_at: int
    size: str  # one of SCHEMA_SIZES, else "auto"
    quality: Literal["low", "medium", "high", "auto"]
    background: Literal["opaque", "auto"]
    output_format: OutputFormat
    partial_image_index: int | None = omitted_if_none()
    usage: ImagesUsage | None = omitted_if_none()
    image_size: str  # extension: the "WxH" written


class ImageEditRequest(ImageRequest):
    """The form fields of /v1/images/edits (the files are read apart: ``image``/``image[]``, ``mask``)."""
