"""``create_app(settings)``: wires routers, error handlers and the engine's lifetime; no logic."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.limits import AdmissionLimits
from server.requestlog import RequestLog
from server.routes import chat, completions, health, images, models, playground
from server.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from engine.runner import ChameleonEngine

        engine = ChameleonEngine.start(settings.engine_args, vqgan=settings.vqgan)
        app.state.engine = engine
        app.state.model_class = engine.model_class
        watchdog = asyncio.create_task(_exit_when_engine_dies(app, engine))
        try:
            yield
        finally:
            watchdog.cancel()
            engine.shutdown()

    app = FastAPI(title="chameleon-serve", lifespan=lifespan)
    app.state.settings = settings
    app.state.exit_code = 0  # set to 1 by the watchdog; the CLI exits with it
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    for router in (health.router, models.router, chat.router, completions.router, images.router):
        app.include_router(router)
    if settings.playground:
        app.include_router(playground.router)

    def max_in_flight() -> int | None:
        engine = getattr(app.state, "engine", None)
        if settings.max_queued_requests is None or engine is None:
            return None
        return engine.max_num_seqs + settings.max_queued_requests

    app.add_middleware(AdmissionLimits, max_body_bytes=settings.max_body_bytes, max_in_flight=max_in_flight)
    app.add_middleware(RequestLog)  # outermost: logs rejections by the limits too

    return app


async def _exit_when_engine_dies(app: FastAPI, engine, period_s: float = 1.0) -> None:
    """A dead engine never recovers in-process: /health turns 503 at once, then the process stops
    (gracefully, as on SIGTERM) with a non-zero exit code so the orchestrator restarts it."""
    while engine.is_alive:
        await asyncio.sleep(period_s)
    logging.getLogger(__name__).error("the inference engine died; shutting down with exit code 1")
    app.state.exit_code = 1
    os.kill(os.getpid(), signal.SIGTERM)
