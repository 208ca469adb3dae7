"""Server logging: set up once by ``python -m api serve``; request and task ids on every line.

Text with timestamps by default, one JSON object a line with ``MORAG_LOG_JSON=true``. Two context
variables travel with a request: the request id (the client's ``X-Request-ID`` when it is sane,
else a new one; echoed in the answer) and the task id (from the path, a worker's ``job_id``, or
``task_context()`` around code that works on one task). Secrets never reach a log line: bearer
tokens and the ``sig``/``token``/``key`` query parameters of signed URLs are replaced by
``[redacted]`` in every message, whoever logged it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.config
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("morag_request_id", default=None)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("morag_task_id", default=None)

_SECRET_QUERY = re.compile(r"(?i)([?&;](?:sig|signature|token|key|api_key|access_token)=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
# Paths that name a task: /api/v1/status/{id}[/...], DELETE /api/v1/ingest/{id} (ids: api/ids.py)
_TASK_IN_PATH = re.compile(r"^/api/v1/(?:status|ingest)/([0-9a-f]{32})(?:/|$)")
_JOB_ID_IN_BODY = re.compile(rb'"job_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')

access_log = logging.getLogger("morag.access")


def redact(text: str) -> str:
    """``text`` without bearer tokens or signed-URL secrets."""
    if "=" in text:  # every secret query parameter has one
        text = _SECRET_QUERY.sub(r"\1[redacted]", text)
    if "bearer" in text.lower():
        text = _BEARER.sub(r"\1[redacted]", text)
    return text


@contextlib.contextmanager
def task_context(task_id: str | None) -> Iterator[None]:
    """Every log line inside this block carries ``task_id``."""
    token = task_id_var.set(task_id)
    try:
        yield
    finally:
        task_id_var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the request and task ids of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.task_id = task_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """``2026-12-02T13:00:00.123Z INFO morag.api [req=... task=...] message``"""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        ts = f"{self._second_text}.{int(record.msecs):03d}Z"
        pairs = (("req", getattr(record, "request_id", None)), ("task", getattr(record, "task_id", None)))
        ids = " ".join(f"{k}={v}" for k, v in pairs if v)
        line = f"{ts} {record.levelname} {record.name} " + (f"[{ids}] " if ids else "") + record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, request_id, task_id (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in ("request_id", "task_id"):
            if getattr(record, key, None):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def log_config(level: str = "info", *, json_lines: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig``: every logger (ours, uvicorn's, alembic's) to one handler.

    uvicorn applies it in each of its worker processes (``uvicorn.run(log_config=...)``).
    """
    formatter = "api.logging_setup.JsonFormatter" if json_lines else "api.logging_setup.TextFormatter"
    quiet = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "api.logging_setup.ContextFilter"}},
        "formatters": {"morag": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "morag",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": quiet,
            "uvicorn.error": quiet,
            "alembic": quiet,
            # Our access log replaces uvicorn's: it has the request id, the duration, and redacts.
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
            "httpx": {"handlers": [], "propagate": True, "level": "WARNING"},
        },
    }


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """Apply ``log_config`` in this process."""
    logging.config.dictConfig(log_config(level, json_lines=json_lines))


class RequestContextMiddleware:
    """Request id in, request id out, task id when the request names one, one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        path: str = scope.get("path", "")
        m = _TASK_IN_PATH.match(path)
        rtoken = request_id_var.set(rid)
        ttoken = task_id_var.set(m.group(1) if m else None)
        status = 500
        start = time.perf_counter()
        peek = path.startswith("/worker/")

        async def receive_peeking() -> Message:
            nonlocal peek
            message = await receive()
            if peek and message["type"] == "http.request":
                peek = False  # the first chunk holds job_id (it comes first in every worker body)
                found = _JOB_ID_IN_BODY.search(message.get("body", b"")[:4096])
                if found:
                    task_id_var.set(found.group(1).decode())
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive_peeking, send_with_id)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1f ms',
                client[0],
                scope.get("method", "-"),
                redact(path + ("?" + query if query else "")),
                status,
                (time.perf_counter() - start) * 1000,
            )
            task_id_var.reset(ttoken)
            request_id_var.reset(rtoken)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None
