"""Shared wire pieces: the base model, errors, usage, sampling fields common to chat and completions, and the
image routes' Jacobi window."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from engine.shared.jacobi import MAX_WINDOW

_TOKEN_ID = re.compile(r"[0-9]+")


def _unicode_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]  # any text that reaches the tokenizer


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):  # pydantic would take true as 1
        raise PydanticCustomError("int_type", "Input should be an integer, not true or false")
    return value


# Extension: speculative Jacobi decoding's window, image codes one step may verify (engine/shared/jacobi.py);
# 1 = off, unset = the family's default within the server's --image-jacobi-budget.
JacobiWindow = Annotated[int, Field(ge=1, le=MAX_WINDOW), BeforeValidator(_not_a_bool)]


def omitted_if_none(default: None = None):
    """A field left out of the JSON when None: OpenAI's schema does not allow null there."""
    return Field(default, exclude_if=lambda v: v is None)


class WireModel(BaseModel):
    """Base of every wire model: unknown request fields are ignored, as OpenAI's API does."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class ErrorBody(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(WireModel):
    error: ErrorBody


class StreamOptions(WireModel):
    include_usage: bool = False


class CompletionTokensDetails(WireModel):
    image_tokens: int  # extension: BOI, image codes and EOI the model wrote


class UsageModel(WireModel):
    """Base of every usage object: fields beyond the schema's are the server's extensions (``server/context.py``
    ``Usage.extensions``), sent as they are."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class UsageInfo(UsageModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = omitted_if_none()


class GuidanceFields(WireModel):
    """Classifier-free guidance of generated images, and the text an image-only reply's prompt gets
    (extensions; unset: the checkpoint family's, engine/shared/families/)."""

    cfg_scale: float = Field(1.0, ge=0.0, le=30.0)  # 1 = off
    negative_prompt: Text | None = None  # the unconditional prompt; default the family's, else an empty turn
    image_prompt_suffix: Text | None = None  # appended to the last user text of an image-only reply


class SamplingFields(WireModel):
    """Sampling fields shared by chat and completions, in OpenAI's order, then vLLM's extensions."""

    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what vLLM can send to its engine
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    # --- extensions (vLLM) ---
    top_k: int = Field(0, ge=-1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float = Field(1.0, gt=0.0)
    return_token_ids: bool = False

    @model_validator(mode="after")
    def _stop_and_bias(self) -> SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        for key, bias in (self.logit_bias or {}).items():
            if not _TOKEN_ID.fullmatch(key) or not -100 <= bias <= 100:
                raise ValueError("logit_bias maps token ids (as strings) to values in [-100, 100]")
        return self

    @property
    def num_logprobs(self) -> int | None:
        """Top alternatives vLLM should return per token; None: no logprobs asked for."""
        return None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


FinishReason = Literal["stop", "length"]
