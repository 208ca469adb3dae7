"""Wake-ups for long-polling claims and for waits on a job's end.

A queued job is offered to ONE waiting claim of its lane (:mod:`api.waiters`), in this process
directly and in other server processes through PostgreSQL LISTEN/NOTIFY (the payload names the
jobs' lanes and content types). Waits on a job's end (:mod:`api.job_ends`) are woken by this
process's job events; the notifier wakes them all only when a job may have ended unseen: another
process's NOTIFY that queued nothing (or unknown lanes), or an in-process change of unknown lanes
(the reaper).

A NOTIFY is for the *other* server processes: this one wakes its own waiters directly. A server
process alone on its database sends none (:attr:`Notifier.peers`): on PostgreSQL each NOTIFY costs
the committing backend, the listening backend it wakes, and this process reading its own notice
back, ~0.4 ms of CPU per submit in all on these 2-core machines (docs/benchmarks.md, stop 30).
Who listens is known two ways:

- a process that starts listening asks ``pg_stat_activity`` whether any other session of this
  database is a listener (application name ``morag-listener``), then says hello on the channel;
  any notice from another process counts as a peer, so the processes already running notify it
  from that moment on;
- while it has peers, it asks again every ``peers_check_s``: a process that stops, or crashes,
  leaves that list with its connection. A process alone asks nothing: a newcomer's hello tells it.

A notice a process skipped while a new peer was starting is not lost: the new process's waiting
claims look on their re-check (``claim_recheck_s``) and its waits on a job's end within
``END_RECHECK_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
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
LISTENER_NAME = "morag-listener"  # the application_name of every server process's LISTEN connection
_PEERS_SQL = """SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                  AND application_name = $1 AND pid <> pg_backend_pid())"""
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


def encode_hello(origin: str) -> str:
    """A process that starts listening: "I am here" (neither queued nor ended anything)."""
    return json.dumps({"o": origin, "h": 1}, separators=(",", ":"))


def _decode(payload: str) -> tuple[str | None, list[tuple[str | None, str | None]] | None, bool]:
    """(origin, queued jobs or None when only something ended, a hello); unreadable: unknown
    queued."""
    try:
        body = json.loads(payload)
        queued = body.get("q")
        jobs = None if queued is None else [(lane, ctype) for lane, ctype, n in queued for _ in range(n)]
        return body.get("o"), jobs, bool(body.get("h"))
    except (ValueError, TypeError, AttributeError):
        return None, UNKNOWN, False


class Notifier:
    def __init__(
        self, recheck_s: float = 1.0, standby_lane_rate: int = 20, peers_check_s: float = 2.0
    ) -> None:
        self._pg_conn: Any = None
        self.peers_check_s = peers_check_s  # 0: never look, always NOTIFY
        self._peers_seen = True  # until the first look says otherwise
        self._peer_heard_at = 0.0  # monotonic time of the last notice from another process
        self._listen_task: asyncio.Task[None] | None = None
        self.waiters = Waiters(recheck_s, standby_lane_rate)
        self.ends = JobEnds()  # also a job-event listener (api.app)
        self.origin = uuid.uuid4().hex[:12]  # our own NOTIFYs come back to us: skip them
        self.listening = False  # LISTEN is set up (PostgreSQL)

    @property
    def peers(self) -> bool:
        """Whether another server process may be listening, so a change should NOTIFY it: True
        unless this process listens and its last look found no other listener (and no other
        process's notice arrived since that look began)."""
        return not self.listening or self.peers_check_s <= 0 or self._peers_seen

    async def _look_for_peers(self, conn: Any) -> None:
        began = time.monotonic()
        try:
            found = bool(await conn.fetchval(_PEERS_SQL, LISTENER_NAME))
        except Exception as exc:  # cannot tell: notify (a wasted NOTIFY costs less than a late job)
            log.warning("could not look for other server processes (%s); notifying them anyway", exc)
            found = True
        if found or self._peer_heard_at < began:  # a hello that came in meanwhile wins
            if found != self._peers_seen:
                log.info("other server processes on this database: %s", "yes" if found else "none")
            self._peers_seen = found

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
        origin, queued, hello = _decode(payload)
        if origin == self.origin:
            return  # woken in-process already
        self._peer_heard_at = time.monotonic()  # someone else is here: our changes concern it
        self._peers_seen = True
        if hello:
            return
        if queued is None:
            self.ends.maybe_ended()  # another process ended a job (a completion names none)
        self.wake(queued)

    async def publish(self, conn: AsyncConnection, queued: Queued | None = None) -> None:
        """Inside a write transaction: tell other server processes (PostgreSQL) at commit, if any
        listens (:attr:`peers`)."""
        if conn.dialect.name == "postgresql" and self.peers:
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
                conn = self._pg_conn = await asyncpg.connect(
                    dsn, server_settings={"application_name": LISTENER_NAME}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda *_, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *a: self._on_notify(a[-1]))
                # Listening now: the others notify us from their next change on, and we look.
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, encode_hello(self.origin))
                self._peers_seen = True
                self.listening = True
                # Jobs queued while we were not listening: the waiting claims look once.
                self.wake(UNKNOWN)
                # Until the connection drops (its termination listener fires; the periodic look
                # at is_closed() is a backstop; then reconnect), look for other processes.
                look = self.peers_check_s > 0
                while not conn.is_closed():
                    if look:
                        await self._look_for_peers(conn)
                    look = self.peers_check_s > 0 and self._peers_seen  # alone: a hello says it
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.peers_check_s or 5)
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
