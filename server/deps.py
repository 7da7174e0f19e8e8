"""Shared FastAPI dependencies: settings, engine, auth, model-name check.

The dependencies are coroutines, though none awaits anything: FastAPI runs a plain ``def`` dependency in
its thread pool, a round trip between threads (and the GIL) per dependency of every request.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from engine.frontend.client import ChameleonEngine
from server.errors import NotFound, Unauthorized, Unavailable
from server.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> ChameleonEngine:
    state = request.app.state
    if state.draining:
        raise Unavailable("the server is shutting down; retry on another replica", code="server_draining")
    if state.engine is None:
        raise Unavailable("the model is still loading; retry shortly", code="model_loading")
    if not state.engine.is_alive:
        raise Unavailable("the inference engine is not running", code="engine_dead")
    return state.engine


async def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """Bearer token check in constant time; open when no key is configured."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.api_key.encode()):
        raise Unauthorized("invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")


def check_model(name: str, settings: Settings) -> None:
    if name not in (settings.served_model_name, settings.model):
        raise NotFound(f"model '{name}' does not exist; this server serves '{settings.served_model_name}'",
                       param="model", code="model_not_found")
