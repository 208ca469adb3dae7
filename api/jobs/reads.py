"""Reads for clients: one task, pages of tasks, a batch, queue statistics, workers, indexed documents,
the admin overview; waiting for a result."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from api import job_ends
from api.errors import NotFound, Unprocessable
from api.ids import utcnow
from api.jobs.base import QUEUED, RUNNING, StoreBase, owner_is
from api.jobs.records import (
    IndexedDocument,
    JobKind,
    JobRecord,
    JobState,
    LaneCount,
    LaneLoad,
    ListedJob,
    LiveLane,
    OnlineWorkers,
    TaskStage,
    WorkerRecord,
    is_final,
)
from api.jobs.tables import FILES as F
from api.jobs.tables import JOBS as J
from api.jobs.tables import USERS as U
from api.jobs.tables import WORKERS as W
from protocol.states import DEFAULT_LANE, LaneKind, lane_name

# Task ids are 32 lowercase hex characters (api.ids.new_id); a cursor is the last id of a page.
_CURSOR = re.compile(r"[0-9a-f]{32}")


def check_cursor(cursor: str | None) -> None:
    """A cursor is a task id from ``next_cursor``; anything else is refused, never ignored."""
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise Unprocessable(
            "cursor must be the next_cursor of a previous page (32 hex characters)", code="invalid_cursor"
        )


class ReadStore(StoreBase):
    async def get(self, user_id: int | None, job_id: str) -> JobRecord:
        """One of the user's jobs, else NotFound."""
        async with self.engine.begin() as conn:
            row = (
                (await conn.execute(select(J).where(J.c.id == job_id, owner_is(user_id)))).mappings().first()
            )
        if row is None:
            raise NotFound("no such task", code="task_not_found")
        return JobRecord.from_row(row)

    async def get_any(self, job_id: str) -> JobRecord | None:
        """A job whoever owns it (server-side use only)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(J).where(J.c.id == job_id))).mappings().first()
        return JobRecord.from_row(row) if row else None

    async def list_jobs(
        self, user_id: int | None, state: JobState | None, cursor: str | None, limit: int
    ) -> list[ListedJob]:
        """The user's jobs, newest first; ``cursor`` is the last id of the previous page (else 422)."""
        check_cursor(cursor)
        q = (
            select(J, F.c.original_name)
            .select_from(J.outerjoin(F, F.c.id == J.c.file_id))
            .where(owner_is(user_id))
        )
        if state:
            q = q.where(J.c.state == state.value)
        if cursor:
            q = q.where(J.c.id < cursor)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(q.order_by(J.c.id.desc()).limit(limit))).mappings().all()
        return [ListedJob(JobRecord.from_row(r), r["original_name"]) for r in rows]

    async def list_batch(self, user_id: int | None, batch_id: str) -> list[JobRecord]:
        """The caller's jobs of one batch, in submission order."""
        q = select(J).where(J.c.batch_id == batch_id, owner_is(user_id)).order_by(J.c.id)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [JobRecord.from_row(r) for r in rows]

    async def queue_stats(self, user_id: int | None) -> list[LaneCount]:
        """Per lane: jobs by state, oldest waiting age, workers online (the caller's lanes + default)."""
        now = utcnow()
        lanes = [DEFAULT_LANE]
        if user_id is not None:
            lanes = [lane_name(LaneKind.gpu, user_id), lane_name(LaneKind.cpu, user_id), DEFAULT_LANE]
        async with self.engine.begin() as conn:
            counts = (
                await conn.execute(
                    select(J.c.lane, J.c.state, func.count(), func.min(J.c.created_at))
                    .where(J.c.lane.in_(lanes))
                    .group_by(J.c.lane, J.c.state)
                )
            ).all()
            workers = (
                await conn.execute(
                    select(W.c.user_id, W.c.shared, W.c.serves_gpu, W.c.serves_cpu).where(
                        W.c.last_seen_at > self._live_since(now)
                    )
                )
            ).all()
        out = []
        for lane in lanes:
            by_state = {s.value: 0 for s in JobState}
            oldest = None
            for row in counts:
                if row[0] == lane:
                    by_state[row[1]] = int(row[2])
                    if row[1] == QUEUED:
                        oldest = row[3]
            if lane == DEFAULT_LANE:
                online = sum(1 for w in workers if w.shared)
            else:
                gpu = lane.startswith("gpu-")
                online = sum(
                    1
                    for w in workers
                    if not w.shared and w.user_id == user_id and (w.serves_gpu if gpu else w.serves_cpu)
                )
            out.append(
                LaneCount(
                    lane=lane,
                    **by_state,
                    oldest_queued_age_s=round((now - oldest).total_seconds(), 3) if oldest else None,
                    workers_online=online,
                )
            )
        return out

    async def list_workers(self, user_id: int | None) -> list[WorkerRecord]:
        """The user's workers with their current jobs."""
        return await self._workers(W.c.user_id == user_id)

    async def list_shared_workers(self) -> list[WorkerRecord]:
        """Every shared worker with its current jobs (admin view)."""
        return await self._workers(W.c.shared.is_(True))

    async def _workers(self, which: ColumnElement[bool]) -> list[WorkerRecord]:
        now = utcnow()
        async with self.engine.begin() as conn:
            workers = (await conn.execute(select(W).where(which).order_by(W.c.last_seen_at.desc()))).all()
            running = (
                await conn.execute(
                    select(J.c.id, J.c.worker_key_id, J.c.worker_id).where(
                        J.c.state == RUNNING,
                        J.c.stage == TaskStage.process.value,
                        J.c.worker_key_id.is_not(None),
                    )
                )
            ).all()
        since = self._live_since(now)
        return [
            WorkerRecord(
                worker_id=w.worker_id,
                name=w.name,
                key_id=w.key_id,
                shared=w.shared,
                lanes=[k for k, on in (("gpu", w.serves_gpu), ("cpu", w.serves_cpu)) if on],
                content_types=[c for c in (w.content_types or "").split(",") if c],
                version=w.version,
                device=w.device,
                first_seen_at=w.first_seen_at,
                last_seen_at=w.last_seen_at,
                online=w.last_seen_at > since,
                current_jobs=[
                    r.id for r in running if r.worker_key_id == w.key_id and r.worker_id == w.worker_id
                ],
            )
            for w in workers
        ]

    async def list_documents(self, user_id: int | None, limit: int) -> list[IndexedDocument]:
        """The user's documents as their latest succeeded ingest names them (newest first)."""
        q = (
            select(
                J.c.id, J.c.document_id, J.c.content_type, J.c.source_url, J.c.finished_at, F.c.original_name
            )
            .select_from(J.outerjoin(F, F.c.id == J.c.file_id))
            .where(owner_is(user_id), J.c.kind == JobKind.ingest.value, J.c.state == JobState.succeeded.value)
            .order_by(J.c.id.desc())
        )
        out: dict[str, IndexedDocument] = {}
        async with self.engine.begin() as conn:
            for r in (await conn.execute(q)).all():
                doc = r.document_id or r.id
                if doc not in out:
                    out[doc] = IndexedDocument(
                        document_id=doc,
                        task_id=r.id,
                        content_type=r.content_type,
                        source=r.source_url or r.original_name,
                        indexed_at=r.finished_at,
                    )
                    if len(out) >= limit:
                        break
        return list(out.values())

    async def list_busy_lanes(self) -> list[LaneLoad]:
        """Every lane with queued or running jobs, whoever owns it (admin view), by name."""
        now = utcnow()
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(J.c.lane, U.c.name, J.c.state, func.count(), func.min(J.c.created_at))
                    .select_from(J.outerjoin(U, U.c.id == J.c.user_id))
                    .where(J.c.state.in_([QUEUED, RUNNING]))
                    .group_by(J.c.lane, U.c.name, J.c.state)
                )
            ).all()
        lanes: dict[str, dict[str, Any]] = {}
        for lane, user, state, count, oldest in rows:
            entry = lanes.setdefault(
                lane, {"lane": lane, "user": user, QUEUED: 0, RUNNING: 0, "oldest_queued_age_s": None}
            )
            entry[state] = int(count)
            if state == QUEUED and oldest is not None:
                entry["oldest_queued_age_s"] = round((now - oldest).total_seconds(), 3)
        return [LaneLoad(**lanes[name]) for name in sorted(lanes)]

    async def count_live_jobs(self) -> list[LiveLane]:
        """Queued and running jobs per lane, whoever owns it, with the oldest queued ``run_after``.

        Only the live states are read, each through its partial index (``ix_jobs_claim_lane`` for
        queued, ``ix_jobs_running_lease`` for running): the cost follows the queue's depth, never
        the history of ended jobs (those are counted as they end, ``morag_jobs_finished``).
        """
        async with self.engine.begin() as conn:
            queued = (
                await conn.execute(
                    select(J.c.lane, func.count(), func.min(J.c.run_after))
                    .where(J.c.state == QUEUED)
                    .group_by(J.c.lane)
                )
            ).all()
            running = (
                await conn.execute(
                    select(J.c.lane, func.count()).where(J.c.state == RUNNING).group_by(J.c.lane)
                )
            ).all()
        lanes: dict[str, LiveLane] = {lane: LiveLane(lane, int(n), 0, first) for lane, n, first in queued}
        for lane, n in running:
            known = lanes.get(lane)
            lanes[lane] = LiveLane(
                lane, known.queued if known else 0, int(n), known.oldest_queued_run_after if known else None
            )
        return [lanes[name] for name in sorted(lanes)]

    async def count_online_workers(self) -> OnlineWorkers:
        """Workers seen within the presence TTL (the ``last_seen_at`` index), by the lanes they serve."""
        since = self._live_since(utcnow())
        gpu = func.coalesce(func.sum(case((W.c.serves_gpu, 1), else_=0)), 0)
        cpu = func.coalesce(func.sum(case((W.c.serves_cpu, 1), else_=0)), 0)
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(gpu, cpu, func.count()).where(W.c.last_seen_at > since))).one()
        return OnlineWorkers(gpu=int(row[0]), cpu=int(row[1]), total=int(row[2]))

    async def wait_for_final(self, user_id: int | None, job_id: str, timeout: float) -> JobRecord:
        """The job once it is final, or as it stands after ``timeout`` seconds.

        Reads the job when its end may have come (:mod:`api.job_ends`: this process's job event for
        it, another process's notice) and every ``END_RECHECK_S`` as a safety net, not on a timer
        of its own nor on every change of the queue.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.notifier.ends.watch(job_id) as ended:
            while True:
                ended.clear()  # before reading, so an end in between is not missed
                job = await self.get(user_id, job_id)
                remaining = deadline - loop.time()
                if is_final(job.state) or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), min(remaining, job_ends.END_RECHECK_S))
