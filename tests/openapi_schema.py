"""Validate response bodies against OpenAI's published schemas (tests/data/openai_schemas.json)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).parent / "data" / "openai_schemas.json"


@cache
def _document() -> dict:
    return json.loads(SCHEMAS.read_text())


@cache
def _validator(name: str, nullable_completion_finish: bool = False) -> jsonschema.Draft202012Validator:
    doc = _document()
    if nullable_completion_finish:
        # OpenAI streams completions as CreateCompletionResponse objects whose finish_reason is null until the
        # last chunk, as its own API does; the schema lists no null, so only streamed chunks get this one change.
        doc = copy.deepcopy(doc)
        reason = doc["components"]["schemas"]["CreateCompletionResponse"]["properties"]["choices"]["items"][
            "properties"]["finish_reason"]
        reason["enum"] = [*reason["enum"], None]
        reason["type"] = ["string", "null"]
    root = {"$ref": f"#/components/schemas/{name}", **doc}
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root)


def check(name: str, body: dict, *, nullable_completion_finish: bool = False) -> None:
    """Raise with every violation listed when ``body`` does not validate against schema ``name``."""
    errors = sorted(_validator(name, nullable_completion_finish).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}" for e in errors]
        raise AssertionError(f"{name}: {len(errors)} violation(s)\n" + "\n".join(lines))


def sse_events(text: str) -> list[tuple[str | None, dict]]:
    """(event name, JSON data) of each server-sent event, [DONE] left out."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data and data != ["[DONE]"]:
            events.append((name, json.loads("\n".join(data))))
    return events
