"""`POST /v1/responses` wire format (OpenAI's Responses API), stateless: input items in, output items out.

Generated images are ``image_generation_call`` items, as OpenAI's image_generation tool returns them;
text is ``message`` items with ``output_text`` parts; both in the order the model wrote them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.common import JacobiWindow, Text, UsageModel, WireModel, omitted_if_none
from schemas.images import ImageFormatFields, OutputFormat


class InputText(WireModel):
    type: Literal["input_text"]
    text: Text


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str  # a base64 data: URL; file ids and remote URLs are not fetched
    detail: Literal["auto", "low", "high"] | None = None


class OutputTextInput(WireModel):
    """An earlier assistant turn's text, sent back as input."""

    type: Literal["output_text"]
    text: Text


InputPart = Annotated[InputText | InputImage | OutputTextInput, Field(discriminator="type")]


class InputMessage(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Text | list[InputPart] = Field(min_length=1)


class ImageGenerationCallInput(WireModel):
    """An earlier generated image sent back as input: it becomes an image of the assistant's turn."""

    type: Literal["image_generation_call"]
    id: str
    result: str = Field(min_length=1)  # base64 PNG


InputItem = InputMessage | ImageGenerationCallInput  # a message's "type" may be left out


class ImageGenerationTool(ImageFormatFields):
    type: Literal["image_generation"]
    partial_images: int = Field(0, ge=0, le=3)  # previews of each image while it is written (streams only)
    size: str | None = None  # "auto" or a "WxH" the model writes, as on /v1/images/generations (400 otherwise)


class ImageGenerationChoice(WireModel):
    type: Literal["image_generation"]


ToolChoice = Literal["auto", "none", "required"] | ImageGenerationChoice


class ResponsesRequest(WireModel):
    model: str
    input: Text | list[InputItem]
    instructions: Text | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True  # accepted, never stored: this server is stateless
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    tool_choice: ToolChoice = "auto"
    tools: list[ImageGenerationTool] = Field(default_factory=list)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    # --- extensions (as on chat): sampling ---
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    top_k: int = Field(0, ge=-1)
    logit_bias: dict[str, float] | None = None
    repetition_penalty: float = Field(1.0, gt=0.0)
    image_temperature: float | None = Field(None, ge=0.0, le=2.0)
    image_top_k: int | None = Field(None, ge=0)
    image_top_p: float | None = Field(None, gt=0.0, le=1.0)
    jacobi_window: JacobiWindow | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ResponsesRequest:
        if self.tool_choice not in ("auto", "none") and not self.tools:
            raise ValueError("tool_choice asks for image_generation, which is not in tools")
        return self

    @property
    def partial_images(self) -> int:
        """Previews per image: the image tool's ``partial_images``, in a stream (a whole reply has none)."""
        return self.tools[0].partial_images if self.tools and self.stream else 0

    @property
    def image_format(self) -> ImageFormatFields:
        """How images are encoded: the image tool's output fields (PNG without the tool)."""
        return self.tools[0] if self.tools else ImageFormatFields()

    @property
    def image_size(self) -> str | None:
        """The image tool's ``size``, None without the tool."""
        return self.tools[0].size if self.tools else None

    @property
    def modalities(self) -> list[str]:
        """What the model may write: image_generation in tools allows images, tool_choice forces one."""
        if not self.tools or self.tool_choice == "none":
            return ["text"]
        return ["text", "image"] if self.tool_choice == "auto" else ["image"]


class OutputText(WireModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = Field(default_factory=list)
    logprobs: list = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class MessageItem(WireModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class ImageGenerationCall(WireModel):
    id: str
    type: Literal["image_generation_call"] = "image_generation_call"
    status: Literal["in_progress", "generating", "completed", "failed"]
    result: str | None  # base64 PNG once completed
    # --- extension: what result holds (the tool's output_format) ---
    output_format: OutputFormat = "png"


OutputItem = Annotated[MessageItem | ImageGenerationCall, Field(discriminator="type")]


class InputTokensDetails(WireModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0
    image_tokens: int  # extension: BOI, image codes and EOI the model wrote


class ResponseUsage(UsageModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(WireModel):
    reason: Literal["max_output_tokens"]


class ResponseError(WireModel):
    """Why a response failed (OpenAI's ``ResponseError``; its codes are an enum, of which these apply)."""

    code: Literal["server_error", "rate_limit_exceeded"]
    message: str


class ResponseObject(WireModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    metadata: dict[str, str]
    store: Literal[False] = False  # extension's meaning: this response was not stored
    temperature: float
    tool_choice: ToolChoice
    tools: list[ImageGenerationTool]
    top_p: float
    usage: ResponseUsage | None = omitted_if_none()
