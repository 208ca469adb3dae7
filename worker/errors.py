"""Worker-side exceptions.

WorkerError
├── ProcessingError          a job could not be processed (carries error_class + retryable)
│   ├── BadInput             corrupt / unsupported / private input: never retried
│   ├── AuthRequired         the source wants cookies or a sign-in: never retried
│   ├── TransientError       network hiccup, upstream 5xx: retried
│   ├── ProcessingTimeout    retried
│   ├── OutOfMemory          retried (possibly elsewhere)
│   └── ProcessCrashed       the child process running the job died (native crash): retried
├── JobCanceled              the server canceled the job or the lease is gone: stop now
└── ServerError              talking to the server failed (see worker.client)
"""

from __future__ import annotations

from protocol.errors import ErrorClass


class WorkerError(Exception):
    """Worker error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProcessingError(WorkerError):
    """The job could not be processed."""

    error_class: ErrorClass = ErrorClass.internal
    retryable: bool = True


class BadInput(ProcessingError):
    """The input is corrupt, empty or not in a supported format."""

    error_class = ErrorClass.bad_input
    retryable = False


class Unsupported(ProcessingError):
    """This worker has no processor for the job's content type."""

    error_class = ErrorClass.unsupported
    retryable = False


class AuthRequired(ProcessingError):
    """The source asks for a sign-in: add cookies for this site (PUT /api/v1/cookies or --cookies)."""

    error_class = ErrorClass.auth_required
    retryable = False


class TransientError(ProcessingError):
    """A temporary failure (network, upstream service); the job will be retried."""

    error_class = ErrorClass.transient
    retryable = True


class ProcessingTimeout(ProcessingError):
    """Processing took longer than allowed."""

    error_class = ErrorClass.timeout
    retryable = True


class OutOfMemory(ProcessingError):
    """The worker ran out of memory (RAM or GPU) processing this job."""

    error_class = ErrorClass.out_of_memory
    retryable = True


class ProcessCrashed(ProcessingError):
    """The process running the job died (a native crash in a library); the job will be retried."""

    error_class = ErrorClass.internal
    retryable = True


class JobCanceled(WorkerError):
    """The job was canceled or its lease is gone; stop working on it."""


class ServerError(WorkerError):
    """The server could not be reached or refused the request."""
