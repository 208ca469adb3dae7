"""Client exceptions: every failure of a call is one of these, never a bare httpx error.

MoragClientError            base
├── ApiError                the server answered non-2xx: ``status``, ``code``, ``message``, ``hint``
│   └── AuthError           401 / 403: no key, an unknown or revoked key, or the wrong scope
├── ServerUnreachable       connection refused, DNS, TLS or a timeout (httpx transport errors)
└── TaskTimeout             ``wait()`` gave up before the task reached a final state
"""

from __future__ import annotations

from typing import Any

# What a person can do about a code (or, for codes not listed, about the HTTP status).
_HINTS_BY_CODE = {
    "unauthorized": "check --api-key, MORAG_API_KEY or api_key in the config file",
    "wrong_scope": "use a client key (python -m api keys create --user NAME --scope client)",
    "task_not_found": "check the task id (`morag list` shows yours)",
    "document_not_found": "check the document id (`morag documents` shows yours)",
    "batch_not_found": "check the batch id",
    "task_finished": "the task already ended; `morag retry ID` queues it again if it failed",
    "task_not_retryable": "only failed, dead or canceled tasks can be retried",
    "payload_too_large": "send a smaller file (the server's MORAG_MAX_UPLOAD_BYTES)",
    "upload_too_large": "send a smaller file (the server's MORAG_MAX_UPLOAD_BYTES)",
    "unsupported_content": "pass --content-type (audio, video, youtube, document, web, image)",
    "invalid_cursor": "start the listing again without --cursor",
    "index_unavailable": "the embedding service or vector store is down; try again shortly",
}
_HINTS_BY_STATUS = {
    400: "check the arguments",
    401: _HINTS_BY_CODE["unauthorized"],
    403: "this key may not do this; use a client (or admin) key",
    404: "check the id",
    409: "the object is not in a state that allows this",
    413: "send less data",
    415: "pass --content-type",
    422: "check the arguments",
    429: "slow down and try again",
    503: "the server is busy or a dependency is down; try again shortly",
    507: "the server's disk is full; tell its operator",
}


class MoragClientError(Exception):
    """Base of every error the client raises."""


class ApiError(MoragClientError):
    """The server refused or failed the request; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    @property
    def hint(self) -> str:
        """What to do about it, in a few words."""
        if self.code in _HINTS_BY_CODE:
            return _HINTS_BY_CODE[self.code]
        if self.status >= 500 and self.status not in _HINTS_BY_STATUS:
            return "the server failed; try again, or look at the server's log"
        return _HINTS_BY_STATUS.get(self.status, "see the message")


class AuthError(ApiError):
    """401 or 403: the key is missing, unknown, revoked or of the wrong scope."""


class ServerUnreachable(MoragClientError):
    """The server could not be reached (connection, DNS, TLS or timeout)."""


class TaskTimeout(MoragClientError):
    """The task was not final when ``wait()`` gave up."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id} was not finished after {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout


def from_response(status: int, body: Any, text: str) -> ApiError:
    """The error for a non-2xx answer (the server's ``{code, message, detail}``, or its raw text)."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code, message, detail = body["code"], str(body.get("message") or ""), body.get("detail")
    else:
        code, message, detail = f"http_{status}", text.strip()[:300] or f"HTTP {status}", None
    cls = AuthError if status in (401, 403) else ApiError
    return cls(status, code, message, detail)
