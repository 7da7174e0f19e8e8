"""Server-sent events framing for OpenAI-style streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from pydantic import BaseModel

from server.errors import as_api_error, error_body

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


async def with_error_event(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Pass events through; a failure mid-stream becomes one final error event, then [DONE]."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 -- the status line is sent already: report in-band
        yield sse(error_body(as_api_error(exc)))
    yield DONE
