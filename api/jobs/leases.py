"""Changes a worker makes to the jobs it holds: heartbeat, complete, fail (or give back), and the
give-back of jobs claimed for a worker that left during its long-poll.

Each goes through the one fence in :mod:`api.jobs.base`: the job id, its current lease token, the
key that claimed it, ``running`` in the ``process`` stage.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import bindparam, case, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from api.background import backoff_s
from api.errors import JobCanceledError, MoragError, StaleLease
from api.ids import utcnow
from api.jobs.base import (
    QUEUED,
    RUNNING,
    StoreBase,
    fence_params,
    fetch_direct,
    guarded_update,
    run_many_direct,
)
from api.jobs.records import (
    FailOutcome,
    HeartbeatOutcome,
    JobEvent,
    JobKind,
    JobState,
    Lease,
    LeasedJob,
    TaskStage,
)
from api.jobs.tables import JOBS as J
from api.jobs.tables import WORKERS as W
from api.keystore import Principal
from api.notifier import CHANNEL, UNKNOWN, encode_notice
from protocol.errors import ErrorClass

_EVENT_COLS = (J.c.state, J.c.stage, J.c.kind, J.c.webhook_url, J.c.lane, J.c.content_type, J.c.started_at)


def _event(job_id: str, row: Any) -> JobEvent:
    started = row.started_at
    if started is not None and started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return JobEvent(
        job_id,
        JobState(row.state),
        TaskStage(row.stage),
        JobKind(row.kind),
        row.webhook_url is not None,
        lane=row.lane,
        content_type=row.content_type,
        seconds_since_claim=(utcnow() - started).total_seconds() if started is not None else None,
    )


def _repeated_completion(job_id: str, row: Any) -> JobEvent:
    """What the completion of this job answered: an ingest job went on to indexing (``running``),
    a process job ``succeeded``. Marked a repeat, so no listener counts it twice."""
    kind = JobKind(row.kind)
    ingest = kind is JobKind.ingest
    return JobEvent(
        job_id,
        JobState.running if ingest else JobState.succeeded,
        TaskStage.indexing if ingest else TaskStage.done,
        kind,
        row.webhook_url is not None,
        lane=row.lane,
        content_type=row.content_type,
        repeat=True,
    )


# A job whose result is in (stage past process) may since have been indexed, or failed indexing.
_STORED_STATES = (RUNNING, JobState.succeeded.value, JobState.failed.value)
_INGEST = J.c.kind == JobKind.ingest.value
_NOW = bindparam("now", type_=J.c.updated_at.type)
_COMPLETE_VALUES: dict[str, Any] = dict(
    state=case((_INGEST, literal(RUNNING)), else_=literal(JobState.succeeded.value)),
    stage=case((_INGEST, literal(TaskStage.indexing.value)), else_=literal(TaskStage.done.value)),
    result=bindparam("result", type_=J.c.result.type),
    progress=case((_INGEST, literal(0.9)), else_=literal(1.0)),
    progress_message=case((_INGEST, literal("indexing")), else_=literal("done")),
    lease_expires_at=None,
    index_next_at=_NOW,
    finished_at=case((_INGEST, None), else_=_NOW),
    updated_at=_NOW,
    error=None,
    error_class=None,
)

_COMPLETE = guarded_update(_COMPLETE_VALUES, _EVENT_COLS)  # one job's completion (SQLite)

# The PostgreSQL form of a batch of completions: the same fence and values as _COMPLETE_VALUES;
# _COMPLETE_PG also NOTIFYs the other server processes, _COMPLETE_PG_QUIET is for a process alone.
_COMPLETE_PG_DONE = f"""
WITH v AS (
    SELECT * FROM unnest(CAST(:ids AS varchar[]), CAST(:tokens AS varchar[]), CAST(:keys AS varchar[]),
                         CAST(:results AS text[])) AS v(vid, vtoken, vkey, vresult)
), done AS (
    UPDATE jobs SET
        state = CASE WHEN jobs.kind = '{JobKind.ingest.value}' THEN '{RUNNING}'
                     ELSE '{JobState.succeeded.value}' END,
        stage = CASE WHEN jobs.kind = '{JobKind.ingest.value}' THEN '{TaskStage.indexing.value}'
                     ELSE '{TaskStage.done.value}' END,
        result = CAST(v.vresult AS json),
        progress = CASE WHEN jobs.kind = '{JobKind.ingest.value}' THEN 0.9 ELSE 1.0 END,
        progress_message = CASE WHEN jobs.kind = '{JobKind.ingest.value}' THEN 'indexing' ELSE 'done' END,
        lease_expires_at = NULL,
        index_next_at = :now,
        finished_at = CASE WHEN jobs.kind = '{JobKind.ingest.value}' THEN NULL
                           ELSE CAST(:now AS timestamptz) END,
        updated_at = :now,
        error = NULL,
        error_class = NULL
    FROM v
    WHERE jobs.id = v.vid AND jobs.lease_token = v.vtoken AND jobs.worker_key_id = v.vkey
      AND jobs.state = '{RUNNING}' AND jobs.stage = '{TaskStage.process.value}'
    RETURNING jobs.id, jobs.lease_token, jobs.state, jobs.stage, jobs.kind, jobs.webhook_url, jobs.lane,
              jobs.content_type, jobs.started_at
)"""
_COMPLETE_PG = text(
    f"""{_COMPLETE_PG_DONE}, told AS (
    SELECT pg_notify(:channel, :payload) WHERE EXISTS (SELECT 1 FROM done)
)
SELECT done.*, (SELECT count(*) FROM told) AS told FROM done
"""
).bindparams(bindparam("now", type_=J.c.updated_at.type))
_COMPLETE_PG_QUIET = text(f"{_COMPLETE_PG_DONE}\nSELECT done.* FROM done").bindparams(
    bindparam("now", type_=J.c.updated_at.type)
)


class LeaseStore(StoreBase):
    async def heartbeat(self, lease: Lease, progress: float | None, message: str | None) -> HeartbeatOutcome:
        """Extend the lease and record progress; says whether the job was canceled meanwhile."""
        now = utcnow()
        expires = now + timedelta(seconds=self.settings.lease_s)
        values: dict[str, Any] = {"lease_expires_at": expires, "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        if message is not None:
            values["progress_message"] = message
        async with self.engine.begin() as conn:
            row = await self._guarded_update(conn, lease, values, (J.c.worker_id,))
            if row is not None:
                # Presence, at most every PRESENCE_REFRESH_S per worker: a worker with 8 jobs
                # heartbeats 8 times a lease third, and one write a few seconds is plenty for the TTL.
                if not self._presence_fresh_beat(lease.key_id, str(row.worker_id)):
                    await conn.execute(
                        update(W)
                        .where(W.c.key_id == lease.key_id, W.c.worker_id == row.worker_id)
                        .values(last_seen_at=now)
                    )
                return HeartbeatOutcome(expires, False)
            refusal = await self._refusal(conn, lease)
        if isinstance(refusal, JobCanceledError):
            return HeartbeatOutcome(now, True)
        raise refusal

    async def lock_lease(self, conn: AsyncConnection, lease: Lease) -> None:
        """Row-lock the running job ``lease`` holds in the caller's transaction (artifact uploads).

        Refused like heartbeat and complete: canceled -> JobCanceledError, else StaleLease.
        """
        await self._guarded_row(conn, lease, J.c.id)

    async def complete(self, lease: Lease, markdown: str, metadata: dict[str, Any]) -> JobEvent:
        """Store the result and finish the job (ingest jobs move on to indexing) in one transaction.

        The same completion again (same lease and key, result already in) gets the same answer.
        """
        (outcome,) = await self.complete_many([(lease, markdown, metadata)])
        if isinstance(outcome, MoragError):
            raise outcome
        return outcome

    async def complete_many(
        self, results: list[tuple[Lease, str, dict[str, Any]]]
    ) -> list[JobEvent | MoragError]:
        """Several completions in one transaction (one commit, one NOTIFY); per result its event or
        why it was refused (stale lease, canceled). Nothing is acknowledged before the commit."""
        now = utcnow()
        if self.engine.dialect.name == "postgresql":
            return await self._complete_many_pg(results, now)
        out: list[JobEvent | MoragError] = []
        stored = False
        async with self.engine.begin() as conn:
            # SQLite: the fenced UPDATE of every result in one trip to the database's thread.
            params = [
                {**fence_params(lease), "result": {"markdown": markdown, "metadata": metadata}, "now": now}
                for lease, markdown, metadata in results
            ]
            found = await run_many_direct(conn, _COMPLETE, params)
            for (lease, _, _), rows in zip(results, found, strict=True):
                if rows:
                    stored = True
                    out.append(_event(lease.job_id, rows[0]))
                else:
                    out.append(await self._completed_or_refused(conn, lease))
            if stored:
                await self.notifier.publish(conn)
        if stored:
            self.notifier.wake()  # after the commit: a waiter woken now reads the result
        return out

    async def _complete_many_pg(
        self, results: list[tuple[Lease, str, dict[str, Any]]], now: datetime
    ) -> list[JobEvent | MoragError]:
        """PostgreSQL: the whole batch in ONE statement of fixed text, whatever its size (arrays,
        ``unnest``), committed on its own, with its NOTIFY: one round trip per batch, one prepared
        statement for every batch. A result the fence refused is explained after."""
        params = {
            "ids": [lease.job_id for lease, _, _ in results],
            "tokens": [lease.token for lease, _, _ in results],
            "keys": [lease.key_id for lease, _, _ in results],
            "results": [
                json.dumps({"markdown": markdown, "metadata": metadata}) for _, markdown, metadata in results
            ],
            "now": now,
        }
        stmt = _COMPLETE_PG_QUIET
        if self.notifier.peers:  # other server processes' waits on a job's end look
            stmt = _COMPLETE_PG
            params.update(channel=CHANNEL, payload=encode_notice(self.notifier.origin, None))
        found = await fetch_direct(self.engine, stmt, params)
        rows = {(r.id, r.lease_token): r for r in found}
        out: list[JobEvent | MoragError | None] = [
            _event(lease.job_id, rows[key]) if (key := (lease.job_id, lease.token)) in rows else None
            for lease, _, _ in results
        ]
        if None in out:  # a repeat, or refused: explained by a read of its own (rare)
            async with self.autocommit.connect() as conn:
                for i, ((lease, _, _), event) in enumerate(zip(results, out, strict=True)):
                    if event is None:
                        out[i] = await self._completed_or_refused(conn, lease)
        if rows:
            self.notifier.wake()  # committed: a waiter woken now reads the result
        return cast(list[JobEvent | MoragError], out)  # every None was filled above

    async def _completed_or_refused(self, conn: AsyncConnection, lease: Lease) -> JobEvent | MoragError:
        """A repeated completion (same lease and key, result in) gets the same answer as the first,
        whatever indexing did since; else why not."""
        done = (
            await conn.execute(
                select(J.c.kind, J.c.webhook_url, J.c.lane, J.c.content_type).where(
                    J.c.id == lease.job_id,
                    J.c.lease_token == lease.token,
                    J.c.worker_key_id == lease.key_id,
                    J.c.stage != TaskStage.process.value,
                    J.c.state.in_(_STORED_STATES),
                )
            )
        ).first()
        if done is not None:
            return _repeated_completion(lease.job_id, done)
        return await self._refusal(conn, lease)

    async def fail(self, lease: Lease, error: str, error_class: ErrorClass, retryable: bool) -> FailOutcome:
        """Record a failure: retry later, or end ``failed`` / ``dead``; a ``shutdown`` gives it back."""
        settings = self.settings
        now = utcnow()
        async with self.engine.begin() as conn:
            try:
                cur = await self._guarded_row(conn, lease, J.c.attempt, J.c.max_attempts)
            except JobCanceledError:
                return FailOutcome(JobState.canceled, None)
            retry_at: datetime | None = None
            values: dict[str, Any] = {
                "error": error,
                "error_class": error_class.value,
                "updated_at": now,
                "lease_token": None,
                "lease_expires_at": None,
            }
            if error_class is ErrorClass.shutdown:
                # The worker gave the job back while shutting down: not the job's fault, run it at once.
                values.update(state=QUEUED, run_after=now, attempt=max(cur.attempt - 1, 0), worker_id=None)
                retry_at = now
            elif not retryable:
                values.update(state=JobState.failed.value, finished_at=now)
            elif cur.attempt >= cur.max_attempts:
                values.update(
                    state=JobState.dead.value,
                    finished_at=now,
                    error=f"{error} (gave up after {cur.attempt} attempts)",
                )
            else:
                retry_at = now + timedelta(
                    seconds=backoff_s(settings.retry_base_s, settings.retry_max_s, cur.attempt)
                )
                values.update(
                    state=QUEUED,
                    run_after=retry_at,
                    worker_id=None,
                    progress_message=f"retrying after: {error[:200]}",
                )
            row = await self._guarded_update(conn, lease, values, _EVENT_COLS)
            if row is None:  # cannot happen: the row is locked and matched the fence
                raise StaleLease()
            state = JobState(row.state)
            if state is JobState.queued:
                await self.notifier.publish(conn, UNKNOWN)
        if state is JobState.queued:
            self.notifier.wake(UNKNOWN)  # waiting claims look once (the retry may not be due yet)
        return FailOutcome(state, retry_at, _event(lease.job_id, row))

    async def release_claimed(self, who: Principal, leased: list[LeasedJob]) -> int:
        """Give back jobs just leased to ``who`` for a worker that left before it got the answer
        (its long-poll connection closed): queued again at once, not counted as an attempt."""
        return await self.release_leases([Lease(job.id, job.lease_token, who.key_id) for job in leased])
