"""Client-side writes: queue jobs (with their fallback times) and cancel them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update

from api.errors import Conflict, NotFound
from api.ids import new_id, utcnow
from api.jobs.base import QUEUED, RUNNING, StoreBase, owner_is
from api.jobs.records import JobEvent, JobKind, JobState, NewJob, TaskStage
from api.jobs.tables import JOBS as J
from api.jobs.tables import WORKERS as W
from api.keystore import Principal
from protocol.states import LaneKind, lane_name


class SubmitStore(StoreBase):
    async def _live_lanes(self, conn: Any, user_id: int, since: datetime) -> tuple[bool, bool]:
        """(a GPU-lane worker of the user is live, a CPU-lane worker of the user is live)."""
        row = (
            await conn.execute(
                select(
                    func.coalesce(func.max(case((W.c.serves_gpu, 1), else_=0)), 0),
                    func.coalesce(func.max(case((W.c.serves_cpu, 1), else_=0)), 0),
                ).where(W.c.user_id == user_id, W.c.shared.is_(False), W.c.last_seen_at > since)
            )
        ).one()
        return bool(row[0]), bool(row[1])

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
            index_attempts=0,
        )

    async def enqueue(self, owner: Principal, job: NewJob) -> str:
        """Insert a queued job in its lane, with its fallback times, and wake waiting claims."""
        return (await self.enqueue_many(owner, [job]))[0]

    async def enqueue_many(self, owner: Principal, jobs: list[NewJob]) -> list[str]:
        """Insert several queued jobs in one transaction (a batch is all or nothing)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            live = (False, False)
            if owner.user_id is not None:
                live = await self._live_lanes(conn, owner.user_id, self._live_since(now))
            rows = [self._job_row(owner, job, now, live) for job in jobs]
            await conn.execute(J.insert(), rows)  # one executemany for the whole batch
            queued = [(str(row["lane"]), str(row["content_type"])) for row in rows]
            await self.notifier.publish(conn, queued)
        self.notifier.wake(queued)  # each job to one waiting claim of its lane
        return [str(row["id"]) for row in rows]

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
                    .returning(J.c.stage, J.c.kind, J.c.webhook_url)
                )
            ).first()
            if row is not None:
                return JobEvent(
                    job_id,
                    JobState.canceled,
                    TaskStage(row.stage),
                    JobKind(row.kind),
                    row.webhook_url is not None,
                )
            state = (
                await conn.execute(select(J.c.state).where(J.c.id == job_id, owner_is(user_id)))
            ).scalar()
        if state is None:
            raise NotFound("no such task", code="task_not_found")
        raise Conflict(f"the task already ended ({state})", code="task_finished")
