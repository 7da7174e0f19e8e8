"""Pure parts of client compatibility: chat image shapes, Responses request mapping, the server-default flag."""

from __future__ import annotations

import base64

import pytest
from openapi_schema import check, sse_events

from schemas.responses import ResponsesRequest
from server.cli import build_parser, settings_from_args
from server.errors import BadRequest
from server.generation import PNG
from server.image_shapes import DeltaShaper, message_fields
from server.response_items import OutputItems, ResponseEvents
from server.routes.responses import as_chat_request

PIECES = ["Here: ", PNG(b"\x89PNG-one"), " and ", PNG(b"\x89PNG-two")]


def _url(png: PNG) -> str:
    return "data:image/png;base64," + base64.b64encode(png.data).decode()


def test_content_parts_keep_the_order():
    parts = [p.model_dump(exclude_none=True) for p in message_fields(PIECES, "content_parts")["content"]]
    assert parts == [{"type": "text", "text": "Here: "}, {"type": "image_url", "image_url": {"url": _url(PIECES[1])}},
                     {"type": "text", "text": " and "}, {"type": "image_url", "image_url": {"url": _url(PIECES[3])}}]


def test_openrouter_splits_text_and_images():
    fields = message_fields(PIECES, "openrouter")
    assert fields["content"] == "Here:  and "
    assert [p.image_url.url for p in fields["images"]] == [_url(PIECES[1]), _url(PIECES[3])]


def test_markdown_numbers_images_inline_and_streams_the_same_text():
    content = message_fields(PIECES, "markdown")["content"]
    assert content == f"Here: ![image 1]({_url(PIECES[1])}) and ![image 2]({_url(PIECES[3])})"
    shaper = DeltaShaper("markdown")
    assert "".join(shaper.delta(p).content for p in PIECES) == content


@pytest.mark.parametrize("shape", ["content_parts", "openrouter", "markdown"])
def test_text_only_replies_are_a_string_in_every_shape(shape):
    assert message_fields(["a", "b"], shape) == {"content": "ab"}


def test_streamed_openrouter_image_is_a_delta_images_entry():
    delta = DeltaShaper("openrouter").delta(PIECES[1])
    assert delta.content == "" and delta.images[0].image_url.url == _url(PIECES[1])


@pytest.mark.parametrize("tools,choice,modalities", [
    ([], "auto", ["text"]),
    ([{"type": "image_generation"}], "auto", ["text", "image"]),
    ([{"type": "image_generation"}], "none", ["text"]),
    ([{"type": "image_generation"}], "required", ["image"]),
    ([{"type": "image_generation", "partial_images": 3}], {"type": "image_generation"}, ["image"]),
])
def test_tools_choose_modalities(tools, choice, modalities):
    req = ResponsesRequest(model="m", input="hi", tools=tools, tool_choice=choice)
    assert as_chat_request(req).modalities == modalities


def test_responses_input_becomes_chat_messages():
    req = ResponsesRequest(model="m", instructions="Be brief.", max_output_tokens=5, temperature=0.5, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"type": "image_generation_call", "id": "ig_1", "result": "BBBB", "status": "completed"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]},
    ])
    chat = as_chat_request(req)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "assistant"]
    assert chat.messages[1].parts[1].image_url.url == "data:image/png;base64,AAAA"
    assert chat.messages[2].parts[0].image_url.url == "data:image/png;base64,BBBB"
    assert (chat.max_new_tokens, chat.temperature, chat.top_p) == (5, 0.5, 1.0)


def test_previous_response_id_is_refused():
    with pytest.raises(BadRequest, match="stateless") as err:
        as_chat_request(ResponsesRequest(model="m", input="hi", previous_response_id="resp_1"))
    assert err.value.param == "previous_response_id"


def test_image_output_format_flag(tmp_path):
    settings = settings_from_args(build_parser().parse_args(["--model", str(tmp_path),
                                                             "--image-output-format", "markdown"]))
    assert settings.image_output_format == "markdown"
    assert settings_from_args(build_parser().parse_args(["--model", str(tmp_path)])).image_output_format == (
        "content_parts")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", str(tmp_path), "--image-output-format", "html"])


def test_response_events_build_items_in_order_and_fit_the_schema():
    events = ResponseEvents()
    raw = [e for p in ["Hi", " there", PNG(b"\x89PNG-one"), "bye"] for e in events.piece(p)]
    raw += events.finish("completed")
    parsed = sse_events("".join(raw))
    for name, event in parsed:
        check("ResponseStreamEvent", event)
        assert name == event["type"]
    assert [e["sequence_number"] for _, e in parsed] == list(range(len(parsed)))
    done = [e["item"] for _, e in parsed if e["type"] == "response.output_item.done"]
    assert [(i["type"], i.get("result") or i.get("content")[0]["text"]) for i in done] == [
        ("message", "Hi there"), ("image_generation_call", base64.b64encode(b"\x89PNG-one").decode()),
        ("message", "bye")]
    assert [i.model_dump() for i in events.output.items] == done
    assert "".join(e["delta"] for _, e in parsed if e["type"] == "response.output_text.delta") == "Hi therebye"


def test_empty_reply_is_one_empty_message():
    [item] = OutputItems.of([], "incomplete")
    assert item.type == "message" and item.content[0].text == "" and item.status == "incomplete"
    kinds = [e["type"] for _, e in sse_events("".join(ResponseEvents().finish("completed")))]
    assert kinds == ["response.output_item.added", "response.content_part.added", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done"]
