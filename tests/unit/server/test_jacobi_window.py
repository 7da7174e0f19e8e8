"""The request field ``jacobi_window`` on every route that takes the image sampling fields (chat, both images
routes, Responses): the chat request each route builds carries it as asked, unset stays None (the engine applies
the family's default within its budget), and a bad value is a 400 naming it.

The app runs in-process with a stand-in engine; the shared pipeline is stopped at its door, where the chat
request is recorded, so no engine starts.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from schemas.chat import ChatCompletionRequest
from server.app import create_app
from server.errors import BadRequest
from server.settings import Settings

RECORDED = "recorded"


def _request(client: TestClient, route: str, window: object) -> dict:
    """POST ``route`` with ``jacobi_window`` (left out when ``window`` is None); the response's JSON."""
    field = {} if window is None else {"jacobi_window": window}
    if route == "edits":  # a multipart form: every field is text
        form = {"prompt": "make it red", **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                            for k, v in field.items()}}
        return client.post("/v1/images/edits", data=form, files={"image": ("in.png", b"\x89PNG", "image/png")}).json()
    path, body = {
        "chat": ("/v1/chat/completions", {"model": "m", "modalities": ["image"],
                                          "messages": [{"role": "user", "content": "draw"}]}),
        "generations": ("/v1/images/generations", {"prompt": "a boat"}),
        "responses": ("/v1/responses", {"model": "m", "input": "draw", "tools": [{"type": "image_generation"}]}),
    }[route]
    return client.post(path, json={**body, **field}).json()


@pytest.fixture
def client(monkeypatch) -> tuple[TestClient, list[ChatCompletionRequest]]:
    app = create_app(Settings(model="m", served_model_name="m", engine_args=None))
    app.state.engine = SimpleNamespace(is_alive=True)
    seen: list[ChatCompletionRequest] = []

    async def prepare_chat(engine, settings, req, *args, **kwargs):
        seen.append(req)
        raise BadRequest("stopped before the engine", code=RECORDED)

    for route in ("chat", "images", "responses"):
        monkeypatch.setattr(f"server.routes.{route}.prepare_chat", prepare_chat)
    return TestClient(app), seen


ROUTES = ["chat", "generations", "edits", "responses"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("window", [None, 1, 7, 16])
def test_every_route_carries_the_window_as_asked(client, route, window):
    http, seen = client
    assert _request(http, route, window)["error"]["code"] == RECORDED
    assert [req.jacobi_window for req in seen] == [window]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("window", [0, 17, -1, "x", 2.5, True])
def test_a_bad_window_is_a_400_naming_it(client, route, window):
    http, seen = client
    error = _request(http, route, window)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "jacobi_window"), error
    assert error["message"].startswith("jacobi_window: ") and not seen
    assert _request(http, route, 3)["error"]["code"] == RECORDED  # and a good one goes on to the pipeline
