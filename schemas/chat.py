"""`POST /v1/chat/completions` wire format: messages with text and image parts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.common import (
    FinishReason,
    GuidanceFields,
    JacobiWindow,
    SamplingFields,
    StreamOptions,
    Text,
    UsageInfo,
    WireModel,
    omitted_if_none,
)


class TextPart(WireModel):
    type: Literal["text"]
    text: Text


class ImageURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = omitted_if_none()


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None or (isinstance(self.content, list) and not self.content):
            raise ValueError("message content must not be empty")
        return self

    @property
    def parts(self) -> list[TextPart | ImagePart]:
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content or [])


ImageOutputFormat = Literal["content_parts", "openrouter", "markdown"]
"""How a chat reply carries generated images: an ordered part list as ``content`` (keeps text and images
interleaved), OpenRouter's string ``content`` + ``images`` list, or Markdown images inline in ``content``."""


class PartialImagePart(WireModel):
    """Extension: a preview of an image still being written; later ones are sharper, then the final ImagePart."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL
    partial: Literal[True] = True
    partial_index: int  # 0, 1, ... for each image


class ChatStreamOptions(StreamOptions):
    # --- extensions ---
    partial_images: int = Field(0, ge=0, le=3)  # previews per generated image (0-3, as OpenAI's Images API)


class ChatCompletionRequest(SamplingFields, GuidanceFields):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    modalities: list[Literal["text", "image"]] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: ChatStreamOptions | None = None  # chat's own: adds partial_images
    # --- extensions: sampling of image codes (defaults: the checkpoint family's, engine/shared/families/) ---
    image_temperature: float | None = Field(None, ge=0.0, le=2.0)
    image_top_k: int | None = Field(None, ge=0)
    image_top_p: float | None = Field(None, gt=0.0, le=1.0)
    jacobi_window: JacobiWindow | None = None
    # --- extension: "WxH" pixels of the images written ("auto" or None: the model's default); Lumina-mGPT
    # checkpoints write several sizes, Chameleon's one (400 otherwise, listing them) ---
    image_size: str | None = None
    # --- extension: the reply's image shape; None = the server's --image-output-format ---
    image_output_format: ImageOutputFormat | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError("modalities must not repeat an entry")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @model_validator(mode="after")
    def _previews_need_a_stream(self) -> ChatCompletionRequest:
        if self.partial_images and not self.stream:
            raise ValueError("stream_options.partial_images needs stream: true (previews exist only in a stream)")
        return self

    @property
    def partial_images(self) -> int:
        return self.stream_options.partial_images if self.stream_options else 0

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TopLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(WireModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class ResponseMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | list[ContentPart] | None  # a part list, in order, when the reply holds images ("content_parts")
    refusal: None = None
    # --- extension: generated images in the "openrouter" shape ---
    images: list[ImagePart] | None = omitted_if_none()


class ChatChoice(WireModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None
    # --- extensions ---
    token_ids: list[int] | None = omitted_if_none()


class ChatCompletionResponse(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    # --- extensions ---
    prompt_token_ids: list[int] | None = omitted_if_none()


class DeltaMessage(WireModel):
    role: Literal["assistant"] | None = omitted_if_none()
    # "content_parts": one finished image, or a preview of one being written, as a one-part list
    content: str | list[ContentPart] | list[PartialImagePart] | None = None
    # --- extension: a finished image in the "openrouter" shape ---
    images: list[ImagePart] | None = omitted_if_none()


class ChatChunkChoice(WireModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    # --- extensions ---
    token_ids: list[int] | None = omitted_if_none()


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = omitted_if_none()
    # --- extensions ---
    prompt_token_ids: list[int] | None = omitted_if_none()
