"""Server exceptions and their one mapping to HTTP answers.

    MoragError (500 internal_error)
    ├── Unauthorized        401 unauthorized          missing, unknown or revoked key
    ├── Forbidden           403 forbidden             the key's scope does not allow this
    ├── NotFound            404 not_found             unknown object, or another user's
    ├── StaleLease          409 stale_lease           not the job's current lease of the calling key
    ├── JobCanceledError    409 job_canceled          the job was canceled meanwhile
    ├── Conflict            409 conflict
    ├── BadRequest          400 bad_request           (subclasses give sharper codes)
    ├── PayloadTooLarge     413 payload_too_large
    ├── UnsupportedMedia    415 unsupported_content
    ├── Unprocessable       422 validation_error
    └── InsufficientStorage 507 insufficient_storage

Foreign exceptions: a database that cannot be reached (connection refused or dropped, pool
exhausted, SQLite locked) is 503 ``database_unavailable`` with Retry-After, never a 500.

Every answer body is ``protocol.errors.ErrorBody``: ``{"code", "message", "detail"}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.errors import ErrorBody

log = logging.getLogger("morag.api")


class MoragError(Exception):
    """Internal server error."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str | None = None, *, code: str | None = None, detail: Any = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.message = message or (self.__doc__ or "").strip()
        if code:
            self.code = code
        self.detail = detail


class Unauthorized(MoragError):
    """A valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)."""

    status_code, code = 401, "unauthorized"


class Forbidden(MoragError):
    """This API key's scope does not allow this request."""

    status_code, code = 403, "forbidden"


class NotFound(MoragError):
    """Not found."""

    status_code, code = 404, "not_found"


class StaleLease(MoragError):
    """The lease token is not the job's current lease; the job was reclaimed or finished."""

    status_code, code = 409, "stale_lease"


class JobCanceledError(MoragError):
    """The job was canceled; stop working on it."""

    status_code, code = 409, "job_canceled"


class Conflict(MoragError):
    """The request conflicts with the current state."""

    status_code, code = 409, "conflict"


class BadRequest(MoragError):
    """The request is not valid."""

    status_code, code = 400, "bad_request"


class PayloadTooLarge(MoragError):
    """The upload is larger than the server accepts."""

    status_code, code = 413, "payload_too_large"


class UnsupportedContent(MoragError):
    """The content is not of a type any processor accepts."""

    status_code, code = 415, "unsupported_content"


class Unprocessable(MoragError):
    """The request body is not valid."""

    status_code, code = 422, "validation_error"


class InsufficientStorage(MoragError):
    """The server's disk is full; nothing was stored. Try again later."""

    status_code, code = 507, "insufficient_storage"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_content",
    422: "validation_error",
    429: "rate_limited",
}


DATABASE_RETRY_AFTER_S = 2

_DOCUMENTED = {
    400: "Bad input (stable `code` says which)",
    401: "A valid API key is required (`unauthorized`)",
    403: "The key's scope does not allow this (`wrong_scope`)",
    404: "Unknown object, or another user's",
    409: "Conflicts with the object's state (`stale_lease`, `job_canceled`, `task_finished`, ...)",
    413: "The body or a stored field is over its limit (`body_too_large`, `field_too_large`, ...)",
    422: "Malformed JSON (`invalid_json`) or a field of the wrong type or value (`validation_error`)",
    429: "Too many requests for this key (`rate_limited`); Retry-After says when to try again",
    503: "A service the server needs is unavailable; try again shortly",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error answers: each has the ErrorBody shape."""
    return {s: {"model": ErrorBody, "description": _DOCUMENTED[s]} for s in statuses}


def error_response(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(status_code=status, content=body)


def _clean_validation(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        out.append({"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")})
    return out


def install_handlers(app: FastAPI) -> None:
    """Map every exception to one JSON shape with a stable code."""

    @app.exception_handler(MoragError)
    async def _morag(_: Request, exc: MoragError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("request failed: %s", exc.message)
        return error_response(exc.status_code, exc.code, exc.message, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(422, "invalid_json", f"the body is not valid JSON: {first['msg']}", errors)
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return error_response(422, "validation_error", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 when a JSON body is not UTF-8 or nests deeper than json.loads can
        # follow: for a client that is malformed JSON like any other, so the same 422 invalid_json.
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
            return error_response(422, "invalid_json", f"the body is not valid JSON: {exc.__cause__}")
        code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # Safety net: input the database refuses (PostgreSQL: NUL in text, out-of-range numbers)
        # that no request check caught is the client's error, not a 500.
        log.warning("database refused a value: %s", str(exc.orig)[:300])
        return error_response(
            422, "invalid_data", "a value in the request cannot be stored (invalid characters or range)"
        )

    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s: %s", type(exc).__name__, str(exc)[:300])
        resp = error_response(
            503, "database_unavailable", "the database is unavailable right now; try again shortly"
        )
        resp.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return resp

    for kind in (OperationalError, InterfaceError, PoolTimeout, ConnectionError, TimeoutError):
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(DBAPIError)
    async def _dbapi(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:  # the connection dropped under the statement
            return await _database_down(request, exc)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
