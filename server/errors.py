"""The one place that picks an HTTP status and builds OpenAI-style error bodies.

Code anywhere raises a typed ``APIError`` (or lets a known library error
through); ``install_error_handlers`` turns each into
``{"error": {"message", "type", "param", "code"}}`` with the right status.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.exceptions import VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError

from engine.frontend.images import ImageInputError
from schemas.common import ErrorBody, ErrorResponse

logger = logging.getLogger(__name__)


class APIError(Exception):
    status = 500
    type = "internal_server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class BadRequest(APIError):
    status, type = 400, "invalid_request_error"


class Unauthorized(APIError):
    status, type = 401, "authentication_error"


class NotFound(APIError):
    status, type = 404, "not_found_error"


class PayloadTooLarge(APIError):
    status, type = 413, "invalid_request_error"


class TooManyRequests(APIError):
    status, type = 429, "rate_limit_error"


class Unavailable(APIError):
    status, type = 503, "service_unavailable"


_STATUS_TYPES = {400: BadRequest, 401: Unauthorized, 404: NotFound, 405: BadRequest, 413: PayloadTooLarge,
                 429: TooManyRequests, 503: Unavailable}


def _printable(text: str | None) -> str | None:
    """Messages may echo request text; lone surrogates in it cannot be encoded as JSON UTF-8."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")


def error_body(exc: APIError) -> dict:
    """The JSON body for ``exc``; also used for the final SSE event of a failed stream."""
    body = ErrorBody(message=_printable(exc.message), type=exc.type, param=_printable(exc.param), code=exc.code)
    return ErrorResponse(error=body).model_dump()


# Known errors raised outside our code, mapped by ``as_api_error``; each gets its own handler so it is
# answered like an APIError, not by Starlette's server-error path (which also closes the connection).
CLIENT_ERRORS: tuple[type[Exception], ...] = (VLLMValidationError, ImageInputError)
SERVER_ERRORS: tuple[type[Exception], ...] = (EngineDeadError,)


def as_api_error(exc: BaseException) -> APIError:
    """Map any exception to the APIError a client should see (unknown ones become a logged 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, CLIENT_ERRORS):
        return BadRequest(str(exc), param=getattr(exc, "parameter", None))
    if isinstance(exc, EngineDeadError):
        return Unavailable("the inference engine has stopped; the server is restarting", code="engine_dead")
    logger.error("unhandled error", exc_info=exc)
    return APIError("internal server error", code="internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")), param


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        err = as_api_error(exc)
        headers = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": "1"}}.get(err.status)
        return JSONResponse(error_body(err), status_code=err.status, headers=headers)

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(BadRequest(message, param=param)), status_code=400)

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = _STATUS_TYPES.get(exc.status_code, APIError)(str(exc.detail))
        return JSONResponse(error_body(err), status_code=exc.status_code)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for known in (APIError, *CLIENT_ERRORS, *SERVER_ERRORS):
        app.add_exception_handler(known, on_api_error)
    app.add_exception_handler(Exception, on_api_error)  # a logged 500: a bug
