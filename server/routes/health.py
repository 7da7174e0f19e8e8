"""Operations: `GET /health` (engine liveness), `GET /version` (what is serving), `GET /metrics` (Prometheus)."""

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


@router.get("/health")
async def health(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    return Response(status_code=200 if engine is not None and engine.is_alive else 503)


@router.get("/version")
async def server_version(request: Request) -> JSONResponse:
    """Versions, and the model class vLLM resolves for the checkpoint: ours, through the plugin."""
    return JSONResponse({
        "version": version("chameleon-serve"),
        "vllm_version": vllm.__version__,
        "model_class": request.app.state.model_class,
    })

