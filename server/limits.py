"""Admission limits as ASGI middleware: request body size (413) and requests in flight (429).

Both act before the body is parsed or any engine work starts. The in-flight bound
is the engine's running slots (``max_num_seqs``) plus ``max_queued_requests``:
past it a client is told to come back (``Retry-After``) instead of waiting unseen.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException

from server.errors import APIError, PayloadTooLarge, TooManyRequests, error_body

ASGIApp = Callable[..., Awaitable[None]]
UNLIMITED_PATHS = ("/health", "/metrics", "/version")


async def _reject(send: Callable, err: APIError, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(err)).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class AdmissionLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_in_flight: Callable[[], int | None]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight  # read per request: known only once the engine is up
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _reject(send, self._too_large())
            return
        limit = self.max_in_flight()
        if limit is not None and self.in_flight >= limit:
            await _reject(send, TooManyRequests(f"the server is at its limit of {limit} requests; retry shortly",
                                                code="server_overloaded"), [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self.app(scope, self._counting(receive), send)
        finally:
            self.in_flight -= 1

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over {self.max_body_bytes} bytes", code="request_too_large")

    def _counting(self, receive: Callable) -> Callable:
        """``receive`` that fails once a body without a (truthful) Content-Length passes the limit.

        An HTTPException, because FastAPI turns any other error while reading a body into a 400.
        """
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise HTTPException(413, self._too_large().message)
            return message

        return counted
