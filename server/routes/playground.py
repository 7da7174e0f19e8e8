"""`GET /`: the playground, a static page (server/static: HTML, CSS and JS, no build step) that calls /v1.

The page names no other host; its Content-Security-Policy holds it to this server, so a
mistake that would reach the network elsewhere fails visibly in the browser instead.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from server.deps import get_settings
from server.errors import NotFound
from server.settings import Settings

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@router.get("/playground/config")
async def config(request: Request, settings: Settings = Depends(get_settings)) -> dict:
    """What the page needs before its first request: the model name, whether to ask for a key, and the image
    sizes to offer (``"WxH"`` -> its label, the default first; null while the model loads, empty where it
    writes no images)."""
    engine = request.app.state.engine
    sizes = None if engine is None else engine.image_sizes.offered if engine.can_paint else {}
    return {"model": settings.served_model_name, "api_key_required": settings.api_key is not None,
            "image_sizes": sizes}


@router.get("/playground/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: no path from the URL reaches the file system
        raise NotFound(f"no playground file '{name}'", code="not_found")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
