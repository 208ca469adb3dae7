"""Error classes a worker reports and the JSON error body of every non-2xx answer.

Every error the server answers has the shape ``{"code": "...", "message": "...", "detail": ...}``.
``code`` is stable (clients switch on it); ``message`` is for a person.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class ErrorClass(StrEnum):
    """Why a job failed on a worker; decides whether the server retries it."""

    bad_input = "bad_input"  # corrupt file, unsupported format, private video: never retried
    unsupported = "unsupported"  # the worker cannot process this type: never retried
    auth_required = "auth_required"  # the source needs cookies/sign-in: never retried
    transient = "transient"  # network hiccup, 5xx upstream: retried
    timeout = "timeout"  # retried
    out_of_memory = "out_of_memory"  # retried (maybe on another worker)
    canceled = "canceled"
    shutdown = "shutdown"  # the worker is stopping and gives the lease back: re-queued at once
    internal = "internal"  # a bug on the worker: retried until attempts run out


RETRYABLE_CLASSES = frozenset(
    {ErrorClass.transient, ErrorClass.timeout, ErrorClass.out_of_memory, ErrorClass.internal}
)


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any | None = None
