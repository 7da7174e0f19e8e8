"""One structured log line and the HTTP metrics per request, and ``X-Request-Id`` honoured and returned.

The request's context fills in what only it knows (tokens, images) on ``request.state.log``, a
``RequestRecord``; the line is written when the response, stream included, has been sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from starlette.routing import BaseRoute, Match

from server import metrics
from server.context import RequestRecord

logger = logging.getLogger("chameleon.requests")
ASGIApp = Callable[..., Awaitable[None]]
_MAX_ID = 128
_UNLOGGED = ("/health", "/ready", "/metrics")  # probes and scrapes: frequent and uneventful


def _request_id(headers: dict[bytes, bytes]) -> str:
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    return given if 0 < len(given) <= _MAX_ID and given.isprintable() else uuid.uuid4().hex


class RequestLog:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        # Metric labels are route templates ("/playground/{name}"), so that scanners cannot grow the label set.
        self.routes = routes

    def _route_label(self, scope: dict) -> str:
        """The template of the route that will answer (methods aside: a 405 is labelled by its path too)."""
        return next((route.path for route in self.routes if route.matches(scope)[0] != Match.NONE), "unmatched")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(dict(scope["headers"]))
        record = RequestRecord()
        scope.setdefault("state", {})["log"] = record
        start, status = time.perf_counter(), 500
        route = self._route_label(scope)
        metrics.http_request_started(route)

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = 499  # the client went away before the response (nginx's "client closed request")
            raise
        finally:
            seconds = time.perf_counter() - start
            metrics.http_request_finished(route, scope["method"], status, seconds)
            if scope["path"] not in _UNLOGGED:
                logger.info(json.dumps({
                    "request_id": request_id, "method": scope["method"], "route": scope["path"], "status": status,
                    "latency_ms": round(1000 * seconds, 1), **record.fields(),
                }))
