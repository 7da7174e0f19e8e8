"""`GET /v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from engine.frontend.client import ChameleonEngine
from schemas.models import ModelCard, ModelList
from server.deps import get_engine, get_settings, require_api_key
from server.settings import Settings

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.get("/models")
async def list_models(request: Request, settings: Settings = Depends(get_settings),
                      engine: ChameleonEngine = Depends(get_engine)) -> ModelList:
    card = ModelCard(id=settings.served_model_name, created=request.app.state.started_at,
                     max_model_len=engine.max_model_len)
    return ModelList(data=[card])
