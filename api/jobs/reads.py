"""Reads for clients: one task, pages of tasks, a batch, queue statistics, workers; waiting for a result."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from api.errors import NotFound
from api.ids import utcnow
from api.jobs.base import QUEUED, RUNNING, StoreBase, owner_is
from api.jobs.records import JobRecord, JobState, LaneCount, TaskStage, WorkerRecord, is_final
from api.jobs.tables import JOBS as J
from api.jobs.tables import WORKERS as W
from protocol.states import DEFAULT_LANE, LaneKind, lane_name


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
    ) -> list[JobRecord]:
        """The user's jobs, newest first; ``cursor`` is the last id of the previous page."""
        q = select(J).where(owner_is(user_id))
        if state:
            q = q.where(J.c.state == state.value)
        if cursor:
            q = q.where(J.c.id < cursor)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(q.order_by(J.c.id.desc()).limit(limit))).mappings().all()
        return [JobRecord.from_row(r) for r in rows]

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
        now = utcnow()
        async with self.engine.begin() as conn:
            workers = (
                await conn.execute(select(W).where(W.c.user_id == user_id).order_by(W.c.last_seen_at.desc()))
            ).all()
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
                first_seen_at=w.first_seen_at,
                last_seen_at=w.last_seen_at,
                online=w.last_seen_at > since,
                current_jobs=[
                    r.id for r in running if r.worker_key_id == w.key_id and r.worker_id == w.worker_id
                ],
            )
            for w in workers
        ]

    async def wait_for_final(self, user_id: int | None, job_id: str, timeout: float) -> JobRecord:
        """The job once it is final, or as it stands after ``timeout`` seconds (woken by the notifier)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wake = self.notifier.generation  # grab before reading, so a completion in between is not missed
            job = await self.get(user_id, job_id)
            remaining = deadline - loop.time()
            if is_final(job.state) or remaining <= 0:
                return job
            # Re-check now and then too: another server process may finish it (PostgreSQL wakes us).
            await self.notifier.wait(wake, min(remaining, max(self.settings.claim_recheck_s, 0.05)))
