"""``create_app(settings)``: wires routers, error handlers and the engine's lifetime; no logic."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from vllm.utils.gc_utils import freeze_gc_heap

from engine.frontend.client import ChameleonEngine
from server import metrics
from server.errors import install_error_handlers
from server.limits import AdmissionLimits
from server.requestlog import RequestLog
from server.routes import chat, completions, health, image_edits, images, models, playground, responses
from server.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The socket opens at once and the engine loads in a thread beside it (AsyncLLM supports being
        # built outside the event loop), so probes get answers (503 until loaded) during a long load.
        load = asyncio.create_task(asyncio.to_thread(ChameleonEngine.start, settings.engine_args, settings.family,
                                                     vqgan=settings.vqgan, image_steps=metrics.IMAGE_STEPS))
        watch = asyncio.create_task(_serve_when_loaded(app, load))
        try:
            yield
        finally:
            watch.cancel()
            engine = await _engine_of(load)  # a load still running is waited for: no orphaned workers
            if engine is not None:
                engine.shutdown()
            gc.unfreeze()  # an app torn down in-process hands its startup objects back to the collector

    app = FastAPI(title="chameleon-serve", lifespan=lifespan)
    app.state.settings = settings
    app.state.exit_code = 0  # set to 1 when the engine fails to load or dies; the CLI exits with it
    app.state.engine = None  # set once loaded
    app.state.model_class = None
    app.state.model_runner = None  # vLLM's model runner, "v1" or "v2", once loaded
    app.state.draining = False  # set by the CLI's server when a shutdown signal arrives
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    for router in (health.router, models.router, chat.router, completions.router, images.router,
                   image_edits.router, responses.router):
        app.include_router(router)
    if settings.playground:
        app.include_router(playground.router)

    def max_in_flight() -> int | None:
        engine = app.state.engine
        if settings.max_queued_requests is None or engine is None:
            return None
        return engine.max_num_seqs + settings.max_queued_requests

    app.add_middleware(AdmissionLimits, max_body_bytes=settings.max_body_bytes, max_in_flight=max_in_flight)
    # Outermost: logs and counts rejections by the limits too.
    app.add_middleware(RequestLog, routes=tuple(app.routes))

    return app


async def _serve_when_loaded(app: FastAPI, load: asyncio.Task) -> None:
    try:
        engine = await asyncio.shield(load)
    except Exception:
        logger.exception("the inference engine failed to start; shutting down with exit code 1")
        _stop_with_error(app)
        return
    # Before the first request, as vLLM's own server does: the startup heap (torch, vLLM, transformers) leaves
    # the collector's reach, so a full collection no longer stalls every stream (bench/RESULTS.md).
    freeze_gc_heap()
    app.state.engine, app.state.model_class = engine, engine.model_class
    app.state.model_runner = engine.model_runner
    logger.info("engine loaded (model %s, vLLM model runner %s); %d startup objects frozen out of garbage "
                "collection; serving requests", engine.model_class, engine.model_runner.upper(),
                gc.get_freeze_count())
    await _exit_when_engine_dies(app, engine)


async def _engine_of(load: asyncio.Task) -> ChameleonEngine | None:
    """The loaded engine, once the load is over; None when it failed (logged by _serve_when_loaded)."""
    await asyncio.wait([load])
    return None if load.exception() is not None else load.result()


async def _exit_when_engine_dies(app: FastAPI, engine: ChameleonEngine, period_s: float = 1.0) -> None:
    """A dead engine never recovers in-process: /health turns 503 at once, then the process stops
    (gracefully, as on SIGTERM) with a non-zero exit code so the orchestrator restarts it."""
    while engine.is_alive:
        await asyncio.sleep(period_s)
    logger.error("the inference engine died; shutting down with exit code 1")
    _stop_with_error(app)


def _stop_with_error(app: FastAPI) -> None:
    app.state.exit_code = 1
    os.kill(os.getpid(), signal.SIGTERM)
