"""Runs one job through its processor (in the caller's thread) with no I/O to the server.

Every failure leaves here as a ``ProcessingError`` (or ``JobCanceled``): the processor's own
subclasses as they are, out-of-memory (RAM or CUDA) as ``OutOfMemory``, anything else as an
internal, retryable error whose message names the exception so the user sees something useful.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from worker.errors import JobCanceled, OutOfMemory, ProcessingError, Unsupported
from worker.processors import availability, load_processor
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult

MAX_METADATA_DEPTH = 32  # the server refuses bodies nested deeper than 64 levels
log = logging.getLogger("morag.worker.executor")

_OOM_MARKERS = (
    "out of memory",
    "cudaerrormemoryallocation",
    "cuda_error_out_of_memory",
    "cublas_status_alloc",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for MemoryError and the messages CUDA / CTranslate2 / torch use for OOM."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(m in text for m in _OOM_MARKERS) or "outofmemoryerror" in text


def classify(exc: BaseException) -> ProcessingError | JobCanceled:
    """The error to report for an exception a processor raised."""
    if isinstance(exc, ProcessingError | JobCanceled):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemory(f"out of memory: {type(exc).__name__}: {exc}"[:2000])
    err = ProcessingError(f"internal error in the worker: {type(exc).__name__}: {exc}"[:2000])
    return err


def guarded_progress(
    report: Callable[[float, str], None], canceled: threading.Event
) -> Callable[[float, str], None]:
    """A progress callback that raises JobCanceled once the job was canceled (stops long loops)."""

    def progress(fraction: float, message: str) -> None:
        if canceled.is_set():
            raise JobCanceled()
        try:
            report(min(max(float(fraction), 0.0), 1.0), str(message))
        except Exception:  # a broken progress display must never fail the job
            log.debug("progress report failed", exc_info=True)

    return progress


def execute(job: JobInput, config: ProcessorConfig, canceled: threading.Event | None = None) -> ProcessResult:
    """Process ``job`` with the processor for its content type; raise classified errors only."""
    canceled = canceled or threading.Event()
    job.progress = guarded_progress(job.progress, canceled)
    ok, why = availability(job.content_type)
    processor = load_processor(job.content_type) if ok else None
    if processor is None:
        raise Unsupported(f"this worker cannot process {job.content_type!r}: {why}")
    if getattr(processor, "uses_temp_dir", True):  # made here, in the slot: a job that needs none skips it
        job.temp_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = processor.process(job, config)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        err = classify(exc)
        if err is exc:
            raise
        raise err from exc
    if canceled.is_set():
        raise JobCanceled()
    if not isinstance(result, ProcessResult) or not isinstance(result.markdown, str):
        raise ProcessingError(
            f"the {job.content_type} processor returned {type(result).__name__}, not a result"
        )
    return result


def _clean(value: Any, depth: int = 0) -> Any:
    """JSON the server accepts: no NUL characters, no NaN/Infinity, nesting within its limit."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int) or value is None:
        return value
    if depth >= MAX_METADATA_DEPTH:
        return _clean(str(value))[:1000]
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v, depth + 1) for v in value]
    return _clean(str(value))


def result_payload(result: ProcessResult) -> dict[str, Any]:
    """Markdown and JSON-safe metadata for /worker/complete.

    Text from a corrupt file can hold NUL bytes and numbers can be NaN; the server refuses both
    (PostgreSQL cannot store them), so they are dropped here rather than losing the whole result.
    """
    return {"markdown": _clean(result.markdown), "metadata": _clean(result.metadata)}
