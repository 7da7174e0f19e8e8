"""The one stream loop (``server/driver.py``) and the one usage account (``server/context.py``), without an engine:
a failure mid-stream ends each route's stream in that route's error shape with no finish reason, and a field
added to the context's usage reaches every route's usage, streamed and whole, with no route edited."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from vllm import SamplingParams

from engine.shared.request_options import IMAGE_ONLY, TEXT_ONLY, RequestOptions
from schemas.chat import ChatCompletionRequest
from schemas.completions import CompletionRequest
from schemas.images import ImageGenerationRequest
from schemas.responses import ResponsesRequest
from server import driver
from server.context import RequestContext, RequestRecord, Usage
from server.errors import Unavailable
from server.generation import PNG, ChoiceDelta
from server.prompt import Prompt
from server.routes.chat import _ChatStream
from server.routes.completions import _CompletionStream
from server.routes.images import _Shape
from server.routes.responses import _ResponseStream, as_chat_request

ROUTES = Path(__file__).resolve().parents[3] / "server" / "routes"


class DyingEngine:
    """What the driver asks of an engine, whose generation fails before its first output (a dead engine)."""

    image_grid = (4, 4)
    pixels_per_code = 8

    async def generate(self, prompt, params, request_id):
        raise Unavailable("the inference engine is not running", code="engine_dead")
        yield  # an async generator


def context(mode: int = TEXT_ONLY, usage: Usage | None = None) -> RequestContext:
    usage = usage or Usage(prompt_tokens=5, prompt_image_tokens=2, completion_tokens=[3], completion_image_tokens=[1],
                           images_in=1, images_out=1)
    return RequestContext("id-1", "tiny", Prompt([1, 2, 3, 4, 5], 1), RequestOptions(mode=mode), SamplingParams(n=1),
                          RequestRecord(), usage)


def events(wire, mode: int = TEXT_ONLY) -> list[str]:
    async def run() -> list[str]:
        return [e async for e in driver._events(context(mode), DyingEngine(), wire, 0)]

    return asyncio.run(run())


def data_of(sse_events: list[str]) -> list:
    return [e.split("data: ", 1)[1].strip() for e in sse_events]


def wires(ctx: RequestContext) -> dict:
    usage = {"stream_options": {"include_usage": True}}
    chat = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True, **usage)
    responses = ResponsesRequest(model="tiny", input="hi", stream=True)
    images = ImageGenerationRequest(prompt="a boat", stream=True)
    engine = SimpleNamespace(image_grid=(4, 4), pixels_per_code=8)
    return {"chat": _ChatStream(chat, engine, ctx, "content_parts"),
            "completions": _CompletionStream(CompletionRequest(model="tiny", prompt="hi", stream=True, **usage), ctx,
                                             ""),
            "responses": _ResponseStream(responses, as_chat_request(responses), ctx),
            "images": _Shape(images, engine, ctx, "image_generation")}


def test_a_failure_mid_stream_ends_each_route_in_its_error_shape():
    ctx = context()
    for name in ("chat", "completions"):
        payloads = data_of(events(wires(ctx)[name]))
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["error"]["code"] == "engine_dead"
        assert not any(c.get("finish_reason") for p in payloads[:-2] for c in json.loads(p)["choices"])
    responses = events(wires(ctx)["responses"])
    assert [e.split("\n")[0] for e in responses] == ["event: response.created", "event: response.in_progress",
                                                      "event: response.failed"]
    assert json.loads(data_of(responses)[-1])["response"]["error"]["message"]
    [error] = events(wires(context(IMAGE_ONLY))["images"], IMAGE_ONLY)
    assert error.startswith("event: error\n") and json.loads(data_of([error])[0])["error"]["code"] == "engine_dead"


@dataclasses.dataclass(slots=True)
class CachedUsage(Usage):
    cached_tokens: int = 4


def test_a_field_added_to_the_usage_reaches_every_route_streamed_and_whole():
    ctx = context(usage=CachedUsage(prompt_tokens=5, prompt_image_tokens=2, completion_tokens=[3],
                                    completion_image_tokens=[1], images_in=1, images_out=1))
    usage = ctx.usage
    whole = [usage.chat(with_images=True), usage.completions(), usage.images(), usage.responses()]
    assert all(u.model_dump()["cached_tokens"] == 4 for u in whole)
    streams = wires(ctx)
    for name in ("chat", "completions"):
        assert json.loads(data_of(streams[name].closing())[0])["usage"]["cached_tokens"] == 4
    assert json.loads(data_of(streams["responses"].closing())[-1])["response"]["usage"]["cached_tokens"] == 4
    [image] = asyncio.run(streams["images"].delta(ChoiceDelta(0, [PNG(b"png")], [1, 2, 3], "stop")))
    assert json.loads(data_of([image])[0])["usage"]["cached_tokens"] == 4


USAGE_BUILDERS = {"UsageInfo", "ImagesUsage", "ResponseUsage", "CompletionTokensDetails", "InputTokensDetails",
                  "OutputTokensDetails", "span_mask"}


@pytest.mark.parametrize("route", sorted(p.name for p in ROUTES.glob("*.py")))
def test_routes_build_no_usage_and_count_nothing(route):
    """Usage is built in server/context.py only: no route constructs a usage model or counts image tokens."""
    calls = [n.func for n in ast.walk(ast.parse((ROUTES / route).read_text())) if isinstance(n, ast.Call)]
    called = {f.id if isinstance(f, ast.Name) else f.attr for f in calls if isinstance(f, ast.Name | ast.Attribute)}
    assert not called & USAGE_BUILDERS
