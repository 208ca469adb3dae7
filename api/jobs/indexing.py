"""The indexing stage of ingest jobs: take due work, then finish, defer or fail it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update

from api.ids import utcnow
from api.jobs.base import RUNNING, StoreBase
from api.jobs.claim import lock_and_update
from api.jobs.records import JobRecord, JobState, TaskStage
from api.jobs.tables import JOBS as J
from protocol.errors import TaskErrorClass

_INDEXING = and_(J.c.state == RUNNING, J.c.stage == TaskStage.indexing.value)


class IndexStageStore(StoreBase):
    async def claim_index_work(self, limit: int, hold_s: float) -> list[JobRecord]:
        """Take up to ``limit`` jobs due for indexing, holding them ``hold_s`` (other servers skip them)."""
        now = utcnow()
        cand = (
            select(J.c.id)
            .where(_INDEXING, J.c.index_next_at <= now)
            .order_by(J.c.index_next_at, J.c.id)
            .limit(limit)
        )
        values = {"index_next_at": now + timedelta(seconds=hold_s), "index_attempts": J.c.index_attempts + 1}
        async with self.engine.begin() as conn:
            stmt = lock_and_update(conn.dialect.name, cand, values, tuple(J.c))
            rows = (await conn.execute(stmt)).mappings().all()
        return [JobRecord.from_row(r) for r in rows]

    async def next_index_due(self) -> datetime | None:
        """When the next job in its indexing stage falls due (a retry after an outage, a hold of
        a server process that died), or None when no job is in that stage."""
        async with self.autocommit.connect() as conn:
            due: datetime | None = (
                await conn.execute(select(func.min(J.c.index_next_at)).where(_INDEXING))
            ).scalar()
        if due is not None and due.tzinfo is None:  # SQLite keeps no zone: its times are UTC
            due = due.replace(tzinfo=UTC)
        return due

    async def _update_indexing(self, job_id: str, values: dict[str, Any]) -> bool:
        """Change an ingest job still in its indexing stage (a canceled one stays canceled)."""
        async with self.engine.begin() as conn:
            res = await conn.execute(update(J).where(J.c.id == job_id, _INDEXING).values(**values))
        return bool(res.rowcount)

    async def finish_indexing(self, job_id: str, result: dict[str, Any], message: str) -> bool:
        """Indexed: the ingest job succeeds."""
        now = utcnow()
        values = {
            "state": JobState.succeeded.value,
            "stage": TaskStage.done.value,
            "result": result,
            "progress": 1.0,
            "progress_message": message,
            "finished_at": now,
            "updated_at": now,
            "index_next_at": None,
            "error": None,
            "error_class": None,
        }
        return await self._update_indexing(job_id, values)

    async def defer_indexing(self, job_id: str, retry_at: datetime, reason: str) -> bool:
        """Indexing hit a passing outage: show why on the task and try again at ``retry_at``."""
        values = {
            "index_next_at": retry_at,
            "progress_message": f"waiting for indexing: {reason}"[:500],
            "error": reason,
            "error_class": TaskErrorClass.indexing_delayed.value,
            "updated_at": utcnow(),
        }
        return await self._update_indexing(job_id, values)

    async def fail_indexing(self, job_id: str, reason: str) -> bool:
        """Indexing failed for good: the task ends ``failed`` (its processed result is kept)."""
        now = utcnow()
        values = {
            "state": JobState.failed.value,
            "error": reason,
            "error_class": TaskErrorClass.indexing_failed.value,
            "progress_message": "indexing failed",
            "finished_at": now,
            "updated_at": now,
            "index_next_at": None,
        }
        return await self._update_indexing(job_id, values)
