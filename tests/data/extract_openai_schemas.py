"""Write openai_schemas.json: the response schemas our routes answer with, cut from OpenAI's openapi.yaml.

Usage: python tests/data/extract_openai_schemas.py PATH/openapi.yaml
Keeps the roots below and every schema they reference (``#/components/schemas/...``), drops prose
(descriptions, examples, ``x-`` keys) so the copy stays small. A few schemas still use OpenAPI 3.0's
``nullable: true``, which JSON Schema 2020-12 (the dialect of an OpenAPI 3.1 document) ignores; each becomes
``anyOf: [the schema, null]``, which is what it means. Other validation keywords are untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOTS = ["ListModelsResponse", "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "CreateCompletionResponse", "ImagesResponse", "ErrorResponse", "Response", "ResponseStreamEvent",
         "ImageGenStreamEvent", "ImageEditStreamEvent"]
PROSE = {"description", "example", "examples", "title", "deprecated"}
PREFIX = "#/components/schemas/"


def _strip(node: object) -> object:
    if isinstance(node, dict):
        kept = {k: _strip(v) for k, v in node.items()
                if k != "nullable" and not k.startswith("x-") and not (k in PROSE and not isinstance(v, dict))}
        return {"anyOf": [kept, {"type": "null"}]} if node.get("nullable") is True else kept
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(PREFIX):]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def main(path: str) -> None:
    schemas = yaml.safe_load(Path(path).read_text())["components"]["schemas"]
    keep: dict[str, object] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = _strip(schemas[name])
            todo += sorted(_refs(keep[name]) - keep.keys())
    out = Path(__file__).with_name("openai_schemas.json")
    out.write_text(json.dumps({"components": {"schemas": dict(sorted(keep.items()))}}, indent=1) + "\n")
    print(f"{len(keep)} schemas -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
