"""`POST /v1/completions` wire format (text prompts)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.common import FinishReason, SamplingFields, Text, UsageInfo, WireModel, omitted_if_none


class CompletionRequest(SamplingFields):
    model: str
    prompt: Text | list[Text] | list[int]
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list) -> str | list:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v


class CompletionChoice(WireModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None
    # --- extensions ---
    token_ids: list[int] | None = omitted_if_none()


class CompletionResponse(WireModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = omitted_if_none()
    # --- extensions ---
    prompt_token_ids: list[int] | None = omitted_if_none()
