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


class TaskErrorClass(StrEnum):
    """Why a task failed or waits, as a client sees it: a worker's class or an indexing one."""

    bad_input = "bad_input"
    unsupported = "unsupported"
    auth_required = "auth_required"
    transient = "transient"
    timeout = "timeout"
    out_of_memory = "out_of_memory"
    canceled = "canceled"
    shutdown = "shutdown"
    internal = "internal"
    indexing_delayed = "indexing_delayed"  # the result is in; indexing waits for an outage to pass
    indexing_failed = "indexing_failed"  # indexing failed for good; the processed result is kept


class ErrorCode(StrEnum):
    """The stable ``code`` of error bodies that workers and clients act on."""

    stale_lease = "stale_lease"  # the lease is not (or no longer) this worker's: stop, drop the job
    job_canceled = "job_canceled"  # the job was canceled: stop working on it
    job_not_found = "job_not_found"
    wrong_scope = "wrong_scope"
    bad_signature = "bad_signature"
    task_not_found = "task_not_found"
    task_finished = "task_finished"


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any | None = None
