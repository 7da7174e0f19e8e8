"""Operations: ``GET /health`` (liveness), ``GET /ready`` (readiness), ``GET /version``, ``GET /metrics``.

Liveness is "the engine is loaded and alive": an orchestrator restarts the process when it fails past
a start period. Readiness adds "not draining": a load balancer stops sending requests as soon as a
shutdown begins, while in-flight ones finish.
"""

from __future__ import annotations

from importlib.metadata import version

import vllm
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import metrics

router = APIRouter()


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


def _engine_alive(request: Request) -> bool:
    engine = request.app.state.engine
    return engine is not None and engine.is_alive


@router.get("/health")
async def health(request: Request) -> Response:
    return Response(status_code=200 if _engine_alive(request) else 503)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    if state.draining:
        status = "draining"
    elif state.engine is None:
        status = "loading"
    else:
        status = "ready" if _engine_alive(request) else "dead"
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/version")
async def server_version(request: Request) -> JSONResponse:
    """Versions, the model class vLLM resolves for the checkpoint (ours, through the plugin) and vLLM's model
    runner in use ("v1" or "v2"); both null while the engine loads."""
    return JSONResponse({
        "version": version("chameleon-serve"),
        "vllm_version": vllm.__version__,
        "model_class": request.app.state.model_class,
        "model_runner": request.app.state.model_runner,
    })

