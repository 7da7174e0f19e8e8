"""Server-sent events framing for OpenAI-style streams (chat, completions)."""

from __future__ import annotations

import json

from pydantic import BaseModel

from server.errors import APIError, error_body

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


def error_events(error: APIError) -> list[str]:
    """A stream's end after a failure: one error event, then [DONE]."""
    return [sse(error_body(error)), DONE]
