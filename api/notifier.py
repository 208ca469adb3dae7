"""Wake-ups for long-polling claims and for waits on a job's end.

A queued job is offered to ONE waiting claim of its lane (:mod:`api.waiters`), in this process
directly and in other server processes through PostgreSQL LISTEN/NOTIFY (the payload names the
jobs' lanes and content types). Waits on a job's end (:mod:`api.job_ends`) are woken by this
process's job events; the notifier wakes them all only when a job may have ended unseen: another
process's NOTIFY that queued nothing (or unknown lanes), or an in-process change of unknown lanes
(the reaper).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.job_ends import JobEnds
from api.waiters import Waiters

log = logging.getLogger("morag.notifier")
CHANNEL = "morag_jobs"
_MAX_PAYLOAD = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more

Queued = Iterable[tuple[str | None, str | None]]  # (lane, content type) per queued job; None: unknown
UNKNOWN: list[tuple[str | None, str | None]] = [(None, None)]


def encode_notice(origin: str, queued: Queued | None) -> str:
    body: dict[str, Any] = {"o": origin}
    if queued is not None:
        counts = Counter(queued)
        body["q"] = [[lane, ctype, n] for (lane, ctype), n in counts.items()]
    text_ = json.dumps(body, separators=(",", ":"))
    if len(text_.encode()) > _MAX_PAYLOAD:  # too many lanes to name: "something was queued"
        text_ = json.dumps({"o": origin, "q": [[None, None, 1]]}, separators=(",", ":"))
    return text_


def _decode(payload: str) -> tuple[str | None, list[tuple[str | None, str | None]] | None]:
    """(origin, queued jobs or None when only something ended); unreadable: unknown queued."""
    try:
        body = json.loads(payload)
        queued = body.get("q")
        jobs = None if queued is None else [(lane, ctype) for lane, ctype, n in queued for _ in range(n)]
        return body.get("o"), jobs
    except (ValueError, TypeError, AttributeError):
        return None, UNKNOWN


class Notifier:
    def __init__(self, recheck_s: float = 1.0, standby_lane_rate: int = 20) -> None:
        self._pg_conn: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self.waiters = Waiters(recheck_s, standby_lane_rate)
        self.ends = JobEnds()  # also a job-event listener (api.app)
        self.origin = uuid.uuid4().hex[:12]  # our own NOTIFYs come back to us: skip them
        self.listening = False  # LISTEN is set up (PostgreSQL)

    def wake(self, queued: Queued | None = None) -> None:
        """After a commit: offer each queued job (lane, content type; ``UNKNOWN`` when not known)
        to one waiting claim of this process. Unknown lanes (expired leases, a failure) may hide an
        ended job without an event: the waits on jobs' ends look once."""
        if queued is not None:
            queued = list(queued)
            if any(lane is None for lane, _ in queued):
                self.ends.maybe_ended()
            self.waiters.offer(queued)

    def _on_notify(self, payload: str) -> None:
        origin, queued = _decode(payload)
        if origin == self.origin:
            return  # woken in-process already
        if queued is None:
            self.ends.maybe_ended()  # another process ended a job (a completion names none)
        self.wake(queued)

    async def publish(self, conn: AsyncConnection, queued: Queued | None = None) -> None:
        """Inside a write transaction: tell other server processes (PostgreSQL) at commit."""
        if conn.dialect.name == "postgresql":
            payload = encode_notice(self.origin, queued)
            await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})

    async def start(self, database_url: str) -> None:
        """Listen for other processes' notifications (PostgreSQL only)."""
        if not database_url.startswith("postgresql"):
            return
        self._listen_task = asyncio.create_task(self._listen(database_url))

    async def _listen(self, database_url: str) -> None:
        import asyncpg

        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        while True:
            try:
                self._pg_conn = await asyncpg.connect(dsn)
                lost = asyncio.Event()
                self._pg_conn.add_termination_listener(lambda *_, lost=lost: lost.set())
                await self._pg_conn.add_listener(CHANNEL, lambda *a: self._on_notify(a[-1]))
                self.listening = True
                # Jobs queued while we were not listening: the waiting claims look once.
                self.wake(UNKNOWN)
                # Block until the connection drops (its termination listener fires; the periodic
                # look at is_closed() is a backstop); then reconnect.
                while not self._pg_conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                self.listening = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: retry, never kill the server
                log.warning("LISTEN connection failed (%s); retrying in 2 s", exc)
                await asyncio.sleep(2)

    async def stop(self) -> None:
        await self.waiters.stop()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
        if self._pg_conn is not None and not self._pg_conn.is_closed():
            with contextlib.suppress(Exception):
                await self._pg_conn.close()
