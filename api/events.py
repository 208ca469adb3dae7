"""Job events: after a job changes state through this process, its listeners hear of it.

The listeners are listed once, in ``api.app`` (indexing, webhooks, metrics, the waits on a job's
end); a route that changes a job publishes one :class:`~api.jobs.JobEvent` and so triggers
exactly what that list says. Each
listener decides from the event alone whether it has work (no read-back for jobs that do not
use its feature); its work runs in the background, never in the request.
"""

from __future__ import annotations

from typing import Protocol

from api.jobs import JobEvent


class JobListener(Protocol):
    def job_changed(self, event: JobEvent) -> None:
        """React to a change (cheap and non-blocking: schedule work, do not do it here)."""


class JobEvents:
    """Publishes job events to a fixed list of listeners."""

    def __init__(self) -> None:
        self.listeners: tuple[JobListener, ...] = ()

    def listen(self, *listeners: JobListener) -> None:
        """Set the listeners (once, where the app is put together)."""
        self.listeners = listeners

    def publish(self, event: JobEvent | None) -> None:
        if event is None or event.repeat:
            return  # a repeated call changed nothing: counted, woken and delivered once
        for listener in self.listeners:
            listener.job_changed(event)
