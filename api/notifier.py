"""Wake-ups for long-polling claims.

A new or re-queued job wakes every waiting claim at once: in-process through an asyncio event
(enough for SQLite, one server process), and across server processes through PostgreSQL
LISTEN/NOTIFY. Waiters re-run their claim; only one of them wins each job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("morag.notifier")
CHANNEL = "morag_jobs"


class Notifier:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._pg_conn: Any = None
        self._listen_task: asyncio.Task[None] | None = None

    @property
    def generation(self) -> asyncio.Event:
        """The event the next wake-up will set; grab it before checking for work."""
        return self._event

    def wake(self) -> None:
        """Wake every waiter in this process."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` (from ``generation``) is set or ``timeout`` passes."""
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))
            return True
        except TimeoutError:
            return False

    async def publish(self, conn: AsyncConnection) -> None:
        """Inside a write transaction: tell other server processes (PostgreSQL) at commit."""
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": CHANNEL})

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
                await self._pg_conn.add_listener(CHANNEL, lambda *_: self.wake())
                # Block until the connection drops; then reconnect.
                while not self._pg_conn.is_closed():
                    await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: retry, never kill the server
                log.warning("LISTEN connection failed (%s); retrying in 2 s", exc)
                await asyncio.sleep(2)

    async def stop(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
        if self._pg_conn is not None and not self._pg_conn.is_closed():
            with contextlib.suppress(Exception):
                await self._pg_conn.close()
