"""The server's own upkeep statements: expired leases, lane fallback, the unserved note, file and
artifact retention, and pruning ended tasks.

Every log line about one job is written inside ``task_context(job_id)``, so it carries the task id
(``task=...`` in text logs, ``task_id`` in JSON) as the indexer's and the webhook sender's do.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    and_,
    any_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from api import metrics
from api.ids import utcnow
from api.jobs.base import QUEUED, RUNNING, StoreBase, owner_is
from api.jobs.records import JobState, TaskStage
from api.jobs.tables import ARTIFACTS as A
from api.jobs.tables import DELIVERIES as D
from api.jobs.tables import FILES as F
from api.jobs.tables import JOBS as J
from api.jobs.tables import USERS as U
from api.jobs.tables import WORKERS as W
from api.jobs.unserved import wanted_message
from api.logging_setup import task_context
from api.notifier import UNKNOWN
from protocol.errors import ErrorClass
from protocol.states import FINAL_STATES

_FINAL = sorted(s.value for s in FINAL_STATES)

log = logging.getLogger("morag.upkeep")


def _each_user(dialect: str) -> ColumnElement[bool]:
    """``user_id`` is one of the users': on PostgreSQL an array of their ids, so that the shared
    sweep walks ``ix_jobs_claim_shared_user`` (user_id, shared_at, id) once per user, reading only
    rows whose shared fallback is not due yet, whatever the number of due ones."""
    users = select(U.c.id)
    if dialect == "postgresql":
        return J.c.user_id == any_(func.array(users.scalar_subquery(), type_=ARRAY(Integer())))
    return J.c.user_id.in_(users)


class UpkeepStore(StoreBase):
    _unserved_from: str | None = None  # note_unserved: the lane the next run starts after

    async def release_expired(self) -> int:
        """Return jobs with expired leases to the queue (``dead`` once out of attempts)."""
        now = utcnow()
        out_of_attempts = J.c.attempt >= J.c.max_attempts
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(J)
                .where(J.c.state == RUNNING, J.c.stage == TaskStage.process.value, J.c.lease_expires_at < now)
                .values(
                    state=case((out_of_attempts, literal(JobState.dead.value)), else_=literal(QUEUED)),
                    error=case(
                        (
                            out_of_attempts,
                            literal("the lease expired on every attempt (the worker died or hung)"),
                        ),
                        else_=literal("the lease expired (worker lost); retrying"),
                    ),
                    error_class=literal(ErrorClass.timeout.value),
                    finished_at=case((out_of_attempts, now), else_=None),
                    lease_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                    run_after=now,
                    updated_at=now,
                )
                .returning(J.c.id, J.c.lane, J.c.state, J.c.attempt, J.c.max_attempts)
            )
            expired = res.all()
            count = len(expired)
            if count:
                await self.notifier.publish(conn, UNKNOWN)
        if count:
            self.notifier.wake(UNKNOWN)
        for row in expired:
            dead = row.state == JobState.dead.value
            metrics.count_lease_expiries(row.lane)
            (metrics.count_dead if dead else metrics.count_retry)(row.lane)
            with task_context(str(row.id)):
                if dead:
                    log.warning(
                        "lease of job %s expired on attempt %d of %d (worker died or hung): dead",
                        row.id,
                        row.attempt,
                        row.max_attempts,
                    )
                else:
                    log.warning(
                        "lease of job %s expired on attempt %d of %d (worker died or hung): queued again",
                        row.id,
                        row.attempt,
                        row.max_attempts,
                    )
        return count

    async def sweep_fallback(self) -> int:
        """Make jobs of users whose lane has no live worker claimable by their fallback now.

        Also the server's look at the whole queue: a run that changed nothing asks whether any job
        is queued at all, and while none is (and none was announced since) the runs, the waiting
        claims' re-check and the unserved check are skipped (``Waiters.queue_may_hold``): an idle
        server's database then sees no query of theirs."""
        waiters = self.notifier.waiters
        if not waiters.queue_may_hold:
            return 0
        announced, any_queued = waiters.announced, True
        now = utcnow()
        live = select(W.c.user_id).where(W.c.shared.is_(False), W.c.last_seen_at > self._live_since(now))
        gpu_live = live.where(W.c.serves_gpu)
        cpu_live = live.where(W.c.serves_cpu)
        # A live CPU worker keeps a GPU job from the shared lane only while its CPU fallback is on.
        cpu_live_gpu = cpu_live.where(W.c.user_id.in_(select(U.c.id).where(U.c.cpu_fallback.is_(True))))
        async with self.engine.begin() as conn:
            to_cpu = (
                await conn.execute(
                    update(J)
                    .where(J.c.state == QUEUED, J.c.fallback_at > now, J.c.user_id.not_in(gpu_live))
                    .values(fallback_at=now)
                    .returning(J.c.id, J.c.lane)
                )
            ).all()
            gpu_lane = J.c.lane.like("gpu-tasks-%")
            to_shared = (
                await conn.execute(
                    update(J)
                    .where(
                        J.c.state == QUEUED,
                        _each_user(conn.dialect.name),  # their not-yet-due rows, user by user
                        J.c.shared_at > now,
                        or_(
                            and_(gpu_lane, J.c.user_id.not_in(gpu_live), J.c.user_id.not_in(cpu_live_gpu)),
                            and_(~gpu_lane, J.c.user_id.not_in(cpu_live)),
                        ),
                    )
                    .values(shared_at=now)
                    .returning(J.c.id, J.c.lane)
                )
            ).all()
            count = len(to_cpu) + len(to_shared)
            if count:
                await self.notifier.publish(conn, UNKNOWN)
            else:
                any_queued = bool((await conn.execute(select(exists().where(J.c.state == QUEUED)))).scalar())
        if count:
            self.notifier.wake(UNKNOWN)
        elif not any_queued:
            waiters.none_queued(announced)
        for row in to_cpu:
            with task_context(str(row.id)):
                log.info("job %s (%s): its owner has no live GPU worker; CPU fallback now", row.id, row.lane)
        for row in to_shared:
            with task_context(str(row.id)):
                log.info(
                    "job %s (%s): its owner has no live worker for it; shared fallback now", row.id, row.lane
                )
        return count

    async def schedule_finished_files(self) -> int:
        """Files whose jobs have all ended get a deletion time (after the retention period).

        A file row no job refers to (the job insert failed after the upload) is due once it is older
        than ``orphan_file_age_s``.
        """
        now = utcnow()
        settings = self.settings
        # Probes of ix_jobs_file for each file not scheduled yet: the files' own jobs, not the
        # history (an IN over every job's file_id read all of them: 130 ms with 1,000,000 ended).
        used = exists().where(J.c.file_id == F.c.id)
        unfinished = exists().where(J.c.file_id == F.c.id, J.c.state.not_in(_FINAL))
        orphan_before = now - timedelta(seconds=settings.orphan_file_age_s)
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(F)
                .where(F.c.delete_after.is_(None), used, ~unfinished)
                .values(delete_after=now + timedelta(seconds=settings.file_retention_s))
            )
            orphans = await conn.execute(
                update(F)
                .where(F.c.delete_after.is_(None), ~used, F.c.created_at < orphan_before)
                .values(delete_after=now)
            )
        return int((res.rowcount or 0) + (orphans.rowcount or 0))

    async def drop_unseen_artifacts(self) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
        """Delete the rows of artifacts no client will see; returns (dropped, still known) as (job, name).

        An artifact stays while its lease is the job's lease and the job is running (processing or
        indexing) or ended less than ``file_retention_s`` ago.
        """
        now = utcnow()
        keep = exists().where(
            J.c.id == A.c.job_id,
            J.c.lease_token == A.c.lease_token,
            or_(
                J.c.state == RUNNING,
                and_(
                    J.c.finished_at.is_not(None),
                    J.c.finished_at > now - timedelta(seconds=self.settings.file_retention_s),
                ),
            ),
        )
        async with self.engine.begin() as conn:
            due = [
                (str(d.job_id), str(d.name))
                for d in (await conn.execute(select(A.c.job_id, A.c.name).where(~keep)))
            ]
            for job_id, name in due:
                await conn.execute(delete(A).where(A.c.job_id == job_id, A.c.name == name))
            known = {(str(r.job_id), str(r.name)) for r in (await conn.execute(select(A.c.job_id, A.c.name)))}
        return due, known

    async def note_unserved(self, limit: int = 500, per_lane: int = 100) -> int:
        """Say in the status message of queued jobs whether any online worker can take them.

        Sets the note on jobs nobody can take and clears it once somebody can (new jobs get it at
        their insert already); returns how many messages changed. Each run looks at up to
        ``limit`` jobs: lane by lane, each lane's next ``per_lane`` jobs in claim order, one index
        probe per lane (``ix_jobs_claim_lane``); a run that stops at ``limit`` leaves the next run to
        go on from the following lane, so every lane's head is looked at in turn (the jobs behind
        it are when they come up). It used to read the oldest queued jobs by id, a walk of the
        primary key through every ended job older than them: 160 ms every run, every 5 s, once a
        million jobs had ended.
        """
        if not self.notifier.waiters.queue_may_hold:
            return 0
        now = utcnow()
        changed = 0
        async with self.engine.begin() as conn:
            online = [
                dict(w)
                for w in (
                    await conn.execute(
                        select(
                            W.c.user_id, W.c.shared, W.c.serves_gpu, W.c.serves_cpu, W.c.content_types
                        ).where(W.c.last_seen_at > self._live_since(now))
                    )
                ).mappings()
            ]
            jobs: list[dict[str, Any]] = []
            start = self._unserved_from  # the lane where the last run stopped (None: the first)
            after, wrapped = start, start is None
            while len(jobs) < limit:
                lane = await self._next_queued_lane(conn, after)
                if lane is None:
                    if wrapped:
                        break
                    after, wrapped = None, True  # from the first lane, up to where this run began
                    continue
                if wrapped and start is not None and lane > start:
                    break  # back where this run began
                after = lane
                jobs += await self._lane_head(conn, lane, min(per_lane, limit - len(jobs)))
            self._unserved_from = after if len(jobs) >= limit else None
            for job in jobs:
                want = wanted_message(job, online)
                if want != job["progress_message"]:
                    res = await conn.execute(
                        update(J)
                        .where(
                            J.c.id == job["id"],
                            J.c.state == QUEUED,
                            # unchanged since read: a claim or a retry meanwhile wins
                            J.c.progress_message.is_(None)
                            if job["progress_message"] is None
                            else J.c.progress_message == job["progress_message"],
                        )
                        .values(progress_message=want)
                    )
                    if res.rowcount:
                        changed += int(res.rowcount)
                        with task_context(str(job["id"])):
                            log.debug("job %s: status note now %r", job["id"], want)
        return changed

    @staticmethod
    async def _next_queued_lane(conn: AsyncConnection, after: str | None) -> str | None:
        """The first lane after ``after`` (from the first when None) that has a queued job: one
        probe of ``ix_jobs_claim_lane``, whatever the depth."""
        cond = J.c.state == QUEUED
        if after is not None:
            cond = and_(cond, J.c.lane > after)
        lane = (await conn.execute(select(func.min(J.c.lane)).where(cond))).scalar()
        return None if lane is None else str(lane)

    @staticmethod
    async def _lane_head(conn: AsyncConnection, lane: str, n: int) -> list[dict[str, Any]]:
        """The next ``n`` queued jobs of ``lane`` in claim order, with their owner's choices."""
        rows = await conn.execute(
            select(
                J.c.id,
                J.c.user_id,
                J.c.lane,
                J.c.content_type,
                J.c.fallback_at,
                J.c.shared_at,
                J.c.progress_message,
                U.c.cpu_fallback,  # the owner's choices as they are now (applied at claim)
                U.c.shared_fallback,
            )
            .select_from(J.outerjoin(U, U.c.id == J.c.user_id))
            .where(J.c.state == QUEUED, J.c.lane == lane)
            .order_by(J.c.priority.desc(), J.c.id)
            .limit(n)
        )
        return [dict(r) for r in rows.mappings()]

    async def prune(
        self, user_id: int | None, all_users: bool, finished_before: datetime, status: JobState | None
    ) -> int:
        """Delete ended jobs that finished before the cutoff (and their webhook log).

        Their input files and artifacts are then unused and go with the file sweeps.
        """
        states = [status.value] if status else _FINAL
        cond = and_(J.c.state.in_(states), J.c.finished_at < finished_before)
        if not all_users:
            cond = and_(cond, owner_is(user_id))
        async with self.engine.begin() as conn:
            ids = [str(r.id) for r in (await conn.execute(select(J.c.id).where(cond))).all()]
            for n in range(0, len(ids), 500):
                part = ids[n : n + 500]
                await conn.execute(delete(D).where(D.c.job_id.in_(part)))
                await conn.execute(delete(J).where(J.c.id.in_(part)))
        return len(ids)
