"""The child side of a processing slot: a long-lived process that runs one job at a time.

The parent (``worker.slots.ProcessSlot``) starts it with the ``spawn`` method and speaks over one
``multiprocessing`` pipe. Messages are tuples:

    parent -> child   ("job", seq, {JobInput fields})  run one job (jobs run in the order sent;
                                                        more may wait behind the one running)
                      ("skip", seq)                     drop that job if it has not begun
                      ("quit",)                         exit after the current job
    child -> parent   ("ready", pid)                    started, imports done
                      ("progress", seq, fraction, message)  at most every PROGRESS_EVERY_S (``run_one``)
                      ("result", seq, ProcessResult)
                      ("error", seq, class name, message, error class, retryable)
                      ("canceled", seq)
                      ("skipped", seq)                  dropped as asked, never begun

Models a processor loads stay loaded in this process between jobs (processors cache them), so a
GPU worker pays the load once per slot, not per job. The parent stops a job by killing the whole
process (SIGTERM, then SIGKILL): native code in Whisper or docling cannot be interrupted otherwise.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from worker.errors import JobCanceled, ProcessingError
from worker.executor import classify, execute
from worker.processors.base import JobInput, ProcessorConfig

PROGRESS_EVERY_S = 0.1
log = logging.getLogger("morag.worker.child")


def error_message(seq: int, exc: ProcessingError) -> tuple[str, int, str, str, str, bool]:
    return ("error", seq, type(exc).__name__, exc.message, exc.error_class.value, exc.retryable)


def run_one(conn: Connection, seq: int, fields: dict[str, Any], config: ProcessorConfig) -> None:
    """Run one job and send its outcome (never raises, except when the pipe is gone).

    Progress goes to the parent at most every PROGRESS_EVERY_S (the first report at once, so the
    user sees what the job is doing), and the final one (fraction 1) only from a job that has run
    that long: a quicker job's result says it is done (an echo job sent the parent a progress
    message to read, and had a "100%" line printed, for each result)."""
    start = time.monotonic()
    last = [-PROGRESS_EVERY_S]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or (fraction >= 1.0 and now - start >= PROGRESS_EVERY_S):
            last[0] = now
            conn.send(("progress", seq, float(fraction), str(message)))

    try:
        result = execute(JobInput(**fields, progress=progress), config)
    except JobCanceled:
        conn.send(("canceled", seq))
        return
    except (BrokenPipeError, EOFError):
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        err = classify(exc)
        conn.send(("canceled", seq) if isinstance(err, JobCanceled) else error_message(seq, err))
        return
    try:
        conn.send(("result", seq, result))
    except (BrokenPipeError, EOFError):
        raise
    except Exception as exc:  # metadata that cannot be pickled: say so instead of hanging
        err = ProcessingError(f"the result could not be handed to the worker: {type(exc).__name__}: {exc}")
        conn.send(error_message(seq, err))


def child_main(conn: Connection, config: ProcessorConfig, log_format: str) -> None:
    """Entry point of the child process."""
    # Ctrl-C reaches the whole process group; the parent decides when work stops (its grace period).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from worker.progress import setup_logging

    setup_logging(log_format)
    import os

    conn.send(("ready", os.getpid()))
    jobs: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
    skip: set[int] = set()
    try:
        while True:
            # Before each job, every message already here: a skip sent for a job that waits is
            # seen before that job could begin.
            while not jobs or conn.poll():
                msg = conn.recv()
                if msg[0] == "job":
                    jobs.append((msg[1], msg[2]))
                elif msg[0] == "skip":
                    skip.add(msg[1])
                else:  # quit
                    return
            seq, fields = jobs.popleft()
            if seq in skip:
                skip.discard(seq)
                conn.send(("skipped", seq))
                continue
            run_one(conn, seq, fields, config)
    except (BrokenPipeError, EOFError, OSError):  # the parent is gone
        return
