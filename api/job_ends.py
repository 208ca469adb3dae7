"""Waits on a job's end (``wait_for_final``, behind ``/process/*``): each wait sleeps on its own job.

What wakes a wait::

    this process's job events ──(its job reached a final state)──▶ that job's waits only
    the notifier: another process ended something,
      or this one ended jobs without an event (the reaper) ──────▶ every wait looks once
    nothing for END_RECHECK_S ────────────────────────────────▶ the wait looks once (safety)

The job events come from the listener list in ``api.app`` (:class:`JobEnds` is one of them), so a
completion in this process wakes exactly its waiter, however busy the queue is. Another server
process's completion arrives as a NOTIFY that names no job; those are rare next to the claims and
enqueues that used to wake every wait. The timer is a backstop for what neither covers (a NOTIFY
lost while the LISTEN connection reconnects, a cancel made in another process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from protocol.states import FINAL_STATES

if TYPE_CHECKING:
    from api.jobs.records import JobEvent

#: the safety re-check of a wait that nothing woke (seconds)
END_RECHECK_S = 5.0


class JobEnds:
    """The waits on jobs' ends in this process, by job id."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` may have ended; clear it before each read of the job."""
        event = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waits = self._waiting.get(job_id)
            if waits is not None:
                waits.discard(event)
                if not waits:
                    del self._waiting[job_id]

    def job_changed(self, event: JobEvent) -> None:
        """A job event of this process: wake that job's waits when it ended."""
        if event.state in FINAL_STATES:
            for wait in self._waiting.get(event.job_id, ()):
                wait.set()

    def maybe_ended(self) -> None:
        """Some job may have ended, which is not known: every wait looks once."""
        for waits in self._waiting.values():
            for wait in waits:
                wait.set()
