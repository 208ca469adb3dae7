"""Webhook delivery rows: which ended jobs still owe a webhook, and every attempt made."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Integer, cast, func, select

from api.ids import utcnow
from api.jobs.base import StoreBase
from api.jobs.tables import DELIVERIES as D
from api.jobs.tables import JOBS as J
from protocol.states import FINAL_STATES


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    job_id: str
    attempt: int
    status_code: int | None
    error: str | None
    delivered: bool
    at: datetime


class DeliveryStore(StoreBase):
    async def list_webhooks_due(self, ended_since: datetime, limit: int = 100) -> list[str]:
        """Jobs that ended after ``ended_since`` with a webhook_url and no successful delivery yet."""
        delivered = select(D.c.job_id).where(D.c.delivered.is_(True))
        q = (
            select(J.c.id)
            .where(
                J.c.webhook_url.is_not(None),
                J.c.state.in_([s.value for s in FINAL_STATES]),
                J.c.finished_at >= ended_since,
                J.c.id.not_in(delivered),
            )
            .order_by(J.c.finished_at)
            .limit(limit)
        )
        async with self.engine.begin() as conn:
            return [str(r.id) for r in (await conn.execute(q)).all()]

    async def delivery_attempts(self, job_id: str) -> tuple[int, bool, datetime | None]:
        """(attempts made, one of them delivered, when the last one was made)."""
        q = select(func.count(), func.max(cast(D.c.delivered, Integer)), func.max(D.c.at)).where(
            D.c.job_id == job_id
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(q)).one()
        last = row[2]
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        return int(row[0]), bool(row[1]), last

    async def record_delivery(self, job_id: str, attempt: int, status: int | None, error: str | None) -> None:
        ok = status is not None and 200 <= status < 300
        values = dict(
            job_id=job_id,
            attempt=attempt,
            status_code=status,
            error=error[:1000] if error else None,
            delivered=ok,
            at=utcnow(),
        )
        async with self.engine.begin() as conn:
            await conn.execute(D.insert().values(**values))

    async def list_deliveries(self, job_id: str) -> list[DeliveryRecord]:
        """Every attempt for a job, oldest first."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(D).where(D.c.job_id == job_id).order_by(D.c.id))).all()
        return [
            DeliveryRecord(r.id, r.job_id, r.attempt, r.status_code, r.error, r.delivered, r.at) for r in rows
        ]
