"""Client-side writes: queue jobs (with their fallback times and the unserved note), cancel and retry them."""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Insert, TextClause, bindparam, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from api.errors import Conflict, NotFound
from api.ids import new_id, utcnow
from api.jobs.base import (
    ONLINE_CACHE_S,
    QUEUED,
    RUNNING,
    StoreBase,
    execute_direct,
    owner_is,
    run_many_direct,
)
from api.jobs.claim import leased_job
from api.jobs.records import JobEvent, JobKind, JobState, Lease, NewJob, TaskStage
from api.jobs.tables import DELIVERIES as D
from api.jobs.tables import FILES as F
from api.jobs.tables import JOBS as J
from api.jobs.tables import USERS as U
from api.jobs.tables import WORKERS as W
from api.jobs.unserved import wanted_message
from api.keystore import Principal
from api.notifier import CHANNEL, encode_notice
from api.waiters import Waiter
from protocol.states import LaneKind, lane_name


class SubmitStore(StoreBase):
    async def _online_for_submit(
        self, user_id: int | None, now: datetime, conn: AsyncConnection | None = None
    ) -> list[dict[str, Any]]:
        """The live workers for this user as read at most ONLINE_CACHE_S ago by this process, else
        read now (on ``conn``, or on a connection of its own)."""
        hit = self._online.get(user_id)
        if hit is not None and time.monotonic() - hit[0] < ONLINE_CACHE_S:
            return hit[1]
        if conn is not None:
            return await self._online_workers(conn, user_id, self._live_since(now))
        async with self.autocommit.connect() as own:
            return await self._online_workers(own, user_id, self._live_since(now))

    async def _online_workers(
        self, conn: AsyncConnection, user_id: int | None, since: datetime
    ) -> list[dict[str, Any]]:
        """The live workers that could serve this user, read now: the user's own and the shared ones
        (kept for :meth:`_online_for_submit`)."""
        mine = W.c.shared.is_(True) if user_id is None else or_(W.c.shared.is_(True), W.c.user_id == user_id)
        q = select(W.c.user_id, W.c.shared, W.c.serves_gpu, W.c.serves_cpu, W.c.content_types).where(
            W.c.last_seen_at > since, mine
        )
        rows = [dict(r) for r in (await conn.execute(q)).mappings().all()]
        if len(self._online) > 10_000:  # a bound: users come and go
            self._online.clear()
        self._online[user_id] = (time.monotonic(), rows)
        return rows

    @staticmethod
    def _live_lanes(online: list[dict[str, Any]], user_id: int) -> tuple[bool, bool]:
        """(a GPU-lane worker of the user is live, a CPU-lane worker of the user is live)."""
        own = [w for w in online if not w["shared"] and w["user_id"] == user_id]
        return any(w["serves_gpu"] for w in own), any(w["serves_cpu"] for w in own)

    def _job_row(
        self, owner: Principal, job: NewJob, now: datetime, live: tuple[bool, bool]
    ) -> dict[str, Any]:
        """The row of one queued job in its lane, with fallback times from the owner's live lanes.

        The times are set whatever the owner's fallback choices: those are applied when a job is
        claimed (``api.jobs.claim``), so turning a fallback on later also frees jobs already queued.
        """
        settings = self.settings
        user_id = owner.user_id
        kind = LaneKind.default if user_id is None else job.lane_kind
        fallback_at = shared_at = None
        if user_id is not None and kind is not LaneKind.default:
            gpu_live, cpu_live = live
            if kind is LaneKind.gpu:
                fallback_at = now if not gpu_live else now + timedelta(seconds=settings.fallback_after_s)
            own_live = (gpu_live or (cpu_live and owner.cpu_fallback)) if kind is LaneKind.gpu else cpu_live
            wait = timedelta(seconds=settings.shared_fallback_after_s)
            shared_at = now if not own_live else now + wait
        return dict(
            id=new_id(),
            user_id=user_id,
            lane=lane_name(kind, user_id),
            content_type=job.content_type,
            kind=JobKind(job.kind).value,
            file_id=job.file_id,
            source_url=job.source_url,
            options=job.options or {},
            state=QUEUED,
            stage=TaskStage.process.value,
            priority=job.priority,
            attempt=0,
            max_attempts=settings.max_attempts,
            run_after=now,
            fallback_at=fallback_at,
            shared_at=shared_at,
            batch_id=job.batch_id,
            document_id=job.document_id,
            webhook_url=job.webhook_url,
            index_options=job.index_options,
            created_at=now,
            updated_at=now,
            progress=0.0,
            progress_message=None,
            index_attempts=0,
            **_NO_LEASE,
        )

    async def enqueue(self, owner: Principal, job: NewJob) -> str:
        """Insert a queued job in its lane, with its fallback times, and wake waiting claims."""
        return (await self.enqueue_many(owner, [job]))[0]

    async def enqueue_many(self, owner: Principal, jobs: list[NewJob]) -> list[str]:
        """Insert several queued jobs in one transaction (a batch is all or nothing)."""
        now = utcnow()
        pg = self.engine.dialect.name == "postgresql"
        handed: list[tuple[dict[str, Any], Waiter]] = []
        try:
            if pg:  # the rows and their NOTIFY in one statement of fixed text, committed on its own
                online = await self._online_for_submit(owner.user_id, now)
                rows, handed, queued = self._new_rows(owner, jobs, now, online)
                notify = bool(queued) and self.notifier.peers  # alone: woken below, in-process
                stmt, params = _insert_pg(rows, notify=notify)
                if notify:
                    params.update(channel=CHANNEL, payload=encode_notice(self.notifier.origin, queued))
                await execute_direct(self.engine, stmt, params)
            else:
                async with self.engine.begin() as conn:
                    online = await self._online_for_submit(owner.user_id, now, conn)
                    rows, handed, queued = self._new_rows(owner, jobs, now, online)
                    # every row in one trip to the database's thread
                    await run_many_direct(conn, _insert_sqlite(tuple(rows[0])), [_v(row) for row in rows])
                    if queued:
                        await self.notifier.publish(conn, queued)
        except BaseException:  # not inserted (or not committed): the reserved claims wait on
            for _, waiter in handed:
                self.notifier.waiters.release(waiter)
            raise
        if handed:
            await self._hand(handed)
        self.notifier.wake(queued)  # each job to one waiting claim of its lane
        return [str(row["id"]) for row in rows]

    def _new_rows(
        self, owner: Principal, jobs: list[NewJob], now: datetime, online: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], Waiter]], list[tuple[str, str]]]:
        """The rows to insert, the waiting claims they are handed to, and (lane, type) of each job
        that goes in queued."""
        live = (False, False)
        if owner.user_id is not None:
            live = self._live_lanes(online, owner.user_id)
        rows = [self._job_row(owner, job, now, live) for job in jobs]
        choices = {"cpu_fallback": owner.cpu_fallback, "shared_fallback": owner.shared_fallback}
        for row in rows:  # a job no online worker can take says so from its insert on
            row["progress_message"] = wanted_message({**row, **choices}, online)
        # A claim of this process waiting idle for a job of this lane gets it by its insert.
        handed = self._reserve_waiters(rows)
        queued = [(str(r["lane"]), str(r["content_type"])) for r in rows if r["state"] == QUEUED]
        return rows, handed, queued

    def _reserve_waiters(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Waiter]]:
        """Rows leased, before their insert, to the idle claims of this process that take their
        lane as their own (``api.waiters``): the insert writes them running, with that lease."""
        if not self.settings.claim_handoff:
            return []
        handed = []
        missed: set[tuple[str, str]] = set()  # no open waiter for these: a batch asks once each
        for row in rows:
            wanted = (str(row["lane"]), str(row["content_type"]))
            found = None if wanted in missed else self.notifier.waiters.reserve(*wanted)
            if found is None:
                missed.add(wanted)
                continue
            waiter, lease = found
            row.update(lease)  # type: ignore[call-overload]  # handoff_lease's columns
            handed.append((row, waiter))
        return handed

    async def _hand(self, handed: list[tuple[dict[str, Any], Waiter]]) -> None:
        """After the commit: each reserved claim answers with its job; one that left meanwhile
        gives the lease back at once (queued again, not an attempt)."""
        gone = []
        for row, waiter in handed:
            job = leased_job(SimpleNamespace(**row))
            if not self.notifier.waiters.hand(waiter, job):
                gone.append(Lease(job.id, job.lease_token, row["worker_key_id"]))
        if gone:
            await self.release_leases(gone)

    async def cancel(self, user_id: int | None, job_id: str) -> JobEvent:
        """Cancel a queued or running job of this user; a running one learns it at its next heartbeat."""
        now = utcnow()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(J)
                    .where(J.c.id == job_id, owner_is(user_id), J.c.state.in_([QUEUED, RUNNING]))
                    .values(
                        state=JobState.canceled.value,
                        finished_at=now,
                        updated_at=now,
                        lease_expires_at=None,
                        progress_message="canceled",
                    )
                    .returning(J.c.stage, J.c.kind, J.c.webhook_url, J.c.lane, J.c.content_type)
                )
            ).first()
            if row is not None:
                return JobEvent(
                    job_id,
                    JobState.canceled,
                    TaskStage(row.stage),
                    JobKind(row.kind),
                    row.webhook_url is not None,
                    lane=row.lane,
                    content_type=row.content_type,
                )
            state = (
                await conn.execute(select(J.c.state).where(J.c.id == job_id, owner_is(user_id)))
            ).scalar()
        if state is None:
            raise NotFound("no such task", code="task_not_found")
        raise Conflict(f"the task already ended ({state})", code="task_finished")

    async def retry(self, user_id: int | None, job_id: str) -> str:
        """Queue a failed, dead or canceled job of this user again: same input and options, attempts
        from zero, the webhook log started over; returns its new state."""
        now = utcnow()
        async with self.engine.begin() as conn:
            q = (
                select(J, U.c.cpu_fallback, U.c.shared_fallback)  # the owner's choices, for the note
                .select_from(J.outerjoin(U, U.c.id == J.c.user_id))
                .where(J.c.id == job_id, owner_is(user_id))
                .with_for_update(of=J)
            )
            row = (await conn.execute(q)).mappings().first()
            if row is None:
                raise NotFound("no such task", code="task_not_found")
            if row["state"] not in _RETRYABLE:
                raise Conflict(
                    f"only a failed, dead or canceled task can be retried; this one is {row['state']}",
                    code="task_not_retryable",
                )
            if row["file_id"]:
                kept = await conn.execute(update(F).where(F.c.id == row["file_id"]).values(delete_after=None))
                if not kept.rowcount:
                    raise Conflict(
                        "the uploaded file of this task is no longer kept (file retention); upload it again",
                        code="input_gone",
                    )
            values: dict[str, Any] = dict(
                state=QUEUED,
                stage=TaskStage.process.value,
                attempt=0,
                run_after=now,
                fallback_at=_shifted(row["fallback_at"], row["created_at"], now),
                shared_at=_shifted(row["shared_at"], row["created_at"], now),
                lease_token=None,
                lease_expires_at=None,
                claim_id=None,
                worker_id=None,
                worker_key_id=None,
                progress=0.0,
                progress_message="retried",
                result=None,
                error=None,
                error_class=None,
                index_attempts=0,
                index_next_at=None,
                started_at=None,
                finished_at=None,
                updated_at=now,
            )
            # Nobody can take it? Say so in the same statement (no second round trip).
            online = await self._online_workers(conn, row["user_id"], self._live_since(now))
            values["progress_message"] = wanted_message({**row, **values}, online)
            res = await conn.execute(
                update(J).where(J.c.id == job_id, J.c.state.in_(_RETRYABLE)).values(**values)
            )
            if not res.rowcount:  # it changed meanwhile (another retry won)
                raise Conflict("the task changed meanwhile; look at it again", code="task_not_retryable")
            # The webhook log starts over: the new final state is delivered like the first one was.
            await conn.execute(delete(D).where(D.c.job_id == job_id))
            queued = [(row["lane"], row["content_type"])]
            await self.notifier.publish(conn, queued)
        self.notifier.wake(queued)  # one waiting claim that can take it looks now
        return QUEUED


@functools.cache
def _insert_sqlite(columns: tuple[str, ...]) -> Insert:
    """SQLite: ``INSERT INTO jobs`` of one row (``run_many_direct`` runs it per row), built once
    per column set (a job row always has the same): SQLAlchemy's insert of a dict compiled and
    processed it per submit."""
    return J.insert().values({c: bindparam(f"v_{c}", type_=J.c[c].type) for c in columns})


def _v(row: dict[str, Any]) -> dict[str, Any]:
    return {f"v_{c}": v for c, v in row.items()}


def _with_notify(insert: str, notify: bool) -> TextClause:
    """``insert`` (``INSERT ... RETURNING 1``) followed, when a row went in, by the NOTIFY of the
    queued jobs to the other server processes; without it when none is queued (all handed off)."""
    if not notify:
        return text(insert)
    return text(
        f"WITH ins AS ({insert}) SELECT pg_notify(:channel, :payload) WHERE EXISTS (SELECT 1 FROM ins)"
    )


@functools.cache
def _insert_pg_text(columns: tuple[str, ...], notify: bool = True) -> TextClause:
    """``INSERT INTO jobs`` of any number of rows from one array per column (``unnest``), and the
    NOTIFY when a row went in: the same text for every batch size, so one prepared statement."""
    types = {c: _COLUMN_TYPES[c] for c in columns}
    arrays = ", ".join(f"CAST(:{c} AS {'text' if types[c] == 'json' else types[c]}[])" for c in columns)
    picks = ", ".join(f"CAST({c} AS json)" if types[c] == "json" else c for c in columns)
    names = ", ".join(columns)
    return _with_notify(
        f"INSERT INTO jobs ({names}) SELECT {picks} FROM unnest({arrays}) AS v({names}) RETURNING 1", notify
    )


@functools.cache
def _insert_one_pg_text(columns: tuple[str, ...], notify: bool = True) -> TextClause:
    """``INSERT INTO jobs`` of one row from one scalar per column, and its NOTIFY.

    A submit queues one job: its columns as arrays of one element (``_insert_pg_text``) cost
    asyncpg an array encoding per column (~30 of them, each with its element checks), 0.2 ms of
    CPU per submit (docs/benchmarks.md, stop 23). The columns given are the row's non-NULL ones
    (the others are NULL, as the jobs table has no server defaults), so a few texts in all."""
    values = ", ".join(
        f"CAST(CAST(:{c} AS text) AS json)" if _COLUMN_TYPES[c] == "json" else f":{c}" for c in columns
    )
    return _with_notify(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({values}) RETURNING 1", notify)


def _c_type(t: Any) -> str:
    """The PostgreSQL array element type for a jobs column (JSON travels as text)."""
    from sqlalchemy.dialects import postgresql

    name = str(t.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    name = name.lower()
    for prefix, pg_type in (
        ("json", "json"),
        ("timestamp", "timestamptz"),
        ("integer", "int"),
        ("float", "float8"),
    ):
        if name.startswith(prefix):
            return pg_type
    return "text"


_COLUMN_TYPES = {c.name: _c_type(c.type) for c in J.c}


def _insert_pg(rows: list[dict[str, Any]], notify: bool = True) -> tuple[TextClause, dict[str, Any]]:
    """The insert of ``rows`` and its parameters; ``notify``: with the NOTIFY of queued jobs."""
    if len(rows) == 1:
        row = rows[0]
        one = {c: v for c, v in row.items() if v is not None}
        for c, v in one.items():
            if _COLUMN_TYPES[c] == "json":
                one[c] = json.dumps(v)
        return _insert_one_pg_text(tuple(one), notify), one
    columns = tuple(rows[0])
    stmt = _insert_pg_text(columns, notify)
    params: dict[str, Any] = {}
    for c in columns:
        values = [row[c] for row in rows]
        if _COLUMN_TYPES[c] == "json":
            values = [None if v is None else json.dumps(v) for v in values]
        params[c] = values
    return stmt, params


# A queued job's lease columns (a job handed to a waiting claim by its insert has them set).
_NO_LEASE: dict[str, Any] = dict.fromkeys(
    ("lease_token", "lease_expires_at", "claim_id", "worker_id", "worker_key_id", "started_at")
)

_RETRYABLE = [JobState.failed.value, JobState.dead.value, JobState.canceled.value]


def _shifted(old: datetime | None, created: datetime, now: datetime) -> datetime | None:
    """The same delay after ``now`` as the job first had after its creation."""
    return None if old is None else now + max(old - created, timedelta(0))
