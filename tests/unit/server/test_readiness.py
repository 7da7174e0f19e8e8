"""Liveness, readiness and the HTTP metrics of an app whose engine is not (yet) there: loading and draining.

The app is driven in-process without its lifespan, so no engine is started; the states with a live or a
dead engine are covered over HTTP in tests/server (test_limits, test_engine_death).
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from fastapi.testclient import TestClient

from server.app import _serve_when_loaded, create_app
from server.settings import Settings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def app():
    return create_app(Settings(model="m", served_model_name="m", engine_args=None))


def test_loading_is_live_false_and_ready_false(app):
    client = TestClient(app)
    assert client.get("/health").status_code == 503
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {"status": "loading"}
    error = client.post("/v1/chat/completions", json=CHAT)
    assert error.status_code == 503 and error.json()["error"]["code"] == "model_loading"


def test_draining_is_not_ready_and_refuses_new_requests(app):
    app.state.draining = True
    client = TestClient(app)
    assert client.get("/ready").json() == {"status": "draining"}
    error = client.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert error.status_code == 503 and error.json()["error"]["code"] == "server_draining"


def test_http_metrics_by_route_and_status(app):
    client = TestClient(app)
    client.get("/ready")
    client.get("/no/such/path/12345")
    assert client.get("/playground/app.js").status_code == 200
    text = client.get("/metrics").text
    assert 'chameleon:http_requests_total{method="GET",route="/playground/{name}",status="200"}' in text
    assert 'chameleon:http_requests_total{method="GET",route="/ready",status="503"}' in text
    assert 'route="unmatched",status="404"' in text and "/no/such/path" not in text
    assert 'chameleon:http_requests_in_flight{route="/metrics"} 1.0' in text  # itself, while answering


def test_request_dependencies_run_on_the_event_loop(app, monkeypatch):
    """A plain-function dependency would cost every request a round trip through FastAPI's thread pool."""
    import fastapi.dependencies.utils as dependency_utils

    hops = []

    async def recording(func, *args, **kwargs):
        hops.append(func)
        return func(*args, **kwargs)

    monkeypatch.setattr(dependency_utils, "run_in_threadpool", recording)
    client = TestClient(app)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 503  # auth, settings, engine checked
    assert client.get("/v1/models").status_code == 503
    assert hops == []


def test_the_startup_heap_leaves_the_collector_before_the_engine_serves(app):
    """A full collection over the front end's startup heap would stall every stream (~0.3 s on the tiny model)."""

    class LiveEngine:
        is_alive, model_class, model_runner = True, "ChameleonForConditionalGeneration", "v1"

    async def load_then_serve() -> int:
        load = asyncio.get_running_loop().create_future()
        load.set_result(LiveEngine())
        serving = asyncio.create_task(_serve_when_loaded(app, load))
        while app.state.engine is None:
            await asyncio.sleep(0)
        frozen = gc.get_freeze_count()  # when the first request could arrive
        serving.cancel()
        return frozen

    gc.unfreeze()
    try:
        assert asyncio.run(load_then_serve()) > 10_000
    finally:
        gc.unfreeze()
