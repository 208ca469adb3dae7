"""Size limits on JSON bodies and on the JSON fields that are stored.

An ASGI middleware bounds every body that is parsed in memory (JSON, or no content type, which
FastAPI reads as JSON): a Content-Length over the limit is answered 413 before one byte of the
body is read; a body without one (chunked) is counted as it streams and refused the moment it
passes the limit. Worker routes have their own, larger limit (a completion carries the whole
markdown result). Streamed bodies keep their own limits: uploads (multipart), artifacts
(octet-stream) and cookies (text/plain) never go through here.

``check_stored`` bounds one field that goes into the database (options, metadata), so a body
under the request limit still cannot store more than its field allows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, error_response
from api.settings import Settings
from protocol import paths

if TYPE_CHECKING:
    from api.jobs import NewJob

_STREAMED = (b"multipart/", b"application/octet-stream", b"text/plain")
_STREAMED_PATHS = frozenset({paths.ARTIFACT})  # streamed to disk under their own limit, any type
_WORKER_PREFIX = "/worker/"
_BATCH_SUFFIX = "/ingest/batch"


class BodyTooLarge(HTTPException):
    """A JSON body passed its limit while it was being read (413 body_too_large)."""

    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def limit_for(settings: Settings, path: str) -> int:
    """The byte limit of a JSON body sent to ``path``."""
    if path.startswith(_WORKER_PREFIX):
        return settings.max_worker_json_bytes
    if path.endswith(_BATCH_SUFFIX):
        return max(settings.max_json_bytes, settings.max_batch_json_bytes)
    return settings.max_json_bytes


class JSONBodyLimit:
    """Refuse JSON bodies over their limit with 413, before reading past it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").lower()
        if ctype.startswith(_STREAMED) or scope.get("path") in _STREAMED_PATHS:
            await self.app(scope, receive, send)
            return
        limit = limit_for(self.settings, scope.get("path", ""))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            exc = BodyTooLarge(limit)
            await error_response(413, exc.code, str(exc.detail))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge as exc:  # raised where no exception handler saw it
            if started:
                raise
            await error_response(413, exc.code, str(exc.detail))(scope, receive, send)


def check_stored(limit: int, name: str, value: Any) -> None:
    """Raise 413 field_too_large if ``value`` takes more than ``limit`` bytes as stored JSON."""
    if value is None:
        return
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        raise PayloadTooLarge(
            f"{name} takes {size} bytes as JSON; at most {limit} are stored", code="field_too_large"
        )


def check_job(settings: Settings, job: NewJob) -> NewJob:
    """The job, once its stored JSON fields (options, metadata) are within their limits."""
    check_stored(settings.max_options_bytes, "options", job.options)
    check_stored(settings.max_metadata_bytes, "metadata", (job.index_options or {}).get("metadata"))
    return job
