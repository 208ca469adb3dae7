"""What users do to their tasks besides creating and following them: list (with the tidy ``status``
filter and a checked cursor), retry, read the webhook delivery log, prune, list indexed documents,
and say why a queued task waits.

Every statement here touches the job table (and ``files``, ``webhook_deliveries``, ``workers``);
they belong with the job store (``api/jobstore.py``, or ``api/jobs/`` after its split): fold them
in there, one function per statement, named verb_object as they are.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import Conflict, NotFound, Unprocessable
from api.ids import utcnow
from api.models import Job, StoredFile, User, WebhookDelivery, Worker
from api.notifier import Notifier
from api.settings import Settings
from protocol.states import DEFAULT_LANE, FINAL_STATES, JobState

J = Job.__table__  # type: ignore[attr-defined]
W = Worker.__table__  # type: ignore[attr-defined]
F = StoredFile.__table__  # type: ignore[attr-defined]
WD = WebhookDelivery.__table__  # type: ignore[attr-defined]
U = User.__table__  # type: ignore[attr-defined]

FINAL = [s.value for s in FINAL_STATES]
RETRYABLE = [JobState.failed.value, JobState.dead.value, JobState.canceled.value]
# Task ids are 32 lowercase hex characters (api.ids.new_id); a cursor is the last id of a page.
_CURSOR = re.compile(r"[0-9a-f]{32}")
# The start of the status message of a queued task nobody can take (refreshed, then cleared).
UNSERVED_PREFIX = "waiting: no online worker"


def check_cursor(cursor: str | None) -> None:
    """A cursor is a task id from ``next_cursor``; anything else is refused, never ignored."""
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise Unprocessable(
            "cursor must be the next_cursor of a previous page (32 hex characters)", code="invalid_cursor"
        )


def _owner(user_id: int | None) -> Any:
    return J.c.user_id.is_(None) if user_id is None else J.c.user_id == user_id


async def list_tasks(
    engine: AsyncEngine, user_id: int | None, status: str | None, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """The user's tasks, newest first; ``cursor`` is the last id of the previous page."""
    check_cursor(cursor)
    q = select(J, F.c.original_name).select_from(J.outerjoin(F, F.c.id == J.c.file_id)).where(_owner(user_id))
    if status:
        q = q.where(J.c.state == status)
    if cursor:
        q = q.where(J.c.id < cursor)
    async with engine.begin() as conn:
        rows = (await conn.execute(q.order_by(J.c.id.desc()).limit(limit))).mappings().all()
    return [dict(r) for r in rows]


def _shifted(old: datetime | None, created: datetime, now: datetime) -> datetime | None:
    """The same delay after ``now`` as the job first had after its creation."""
    return None if old is None else now + max(old - created, timedelta(0))


async def retry_task(engine: AsyncEngine, notifier: Notifier, user_id: int | None, job_id: str) -> str:
    """Queue a failed, dead or canceled task again: same input and options, attempts from zero."""
    now = utcnow()
    async with engine.begin() as conn:
        row = (await conn.execute(select(J).where(J.c.id == job_id, _owner(user_id)))).mappings().first()
        if row is None:
            raise NotFound("no such task", code="task_not_found")
        if row["state"] not in RETRYABLE:
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
        res = await conn.execute(
            update(J)
            .where(J.c.id == job_id, J.c.state.in_(RETRYABLE))
            .values(
                state=JobState.queued.value,
                stage="process",
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
        )
        if not res.rowcount:  # it changed meanwhile (another retry won)
            raise Conflict("the task changed meanwhile; look at it again", code="task_not_retryable")
        # The webhook log starts over: the new final state is delivered like the first one was.
        await conn.execute(delete(WD).where(WD.c.job_id == job_id))
        await notifier.publish(conn)
    notifier.wake()
    return JobState.queued.value


async def get_deliveries(
    engine: AsyncEngine, user_id: int | None, job_id: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """A task's webhook URL and every delivery attempt, oldest first."""
    async with engine.begin() as conn:
        job = (await conn.execute(select(J.c.webhook_url).where(J.c.id == job_id, _owner(user_id)))).first()
        if job is None:
            raise NotFound("no such task", code="task_not_found")
        rows = (
            (await conn.execute(select(WD).where(WD.c.job_id == job_id).order_by(WD.c.id))).mappings().all()
        )
    return job.webhook_url, [dict(r) for r in rows]


async def prune_tasks(
    engine: AsyncEngine, user_id: int | None, all_users: bool, finished_before: datetime, status: str | None
) -> int:
    """Delete ended tasks that finished before the cutoff (and their webhook log).

    Their input files and artifacts are then unused and go with the file sweeps.
    """
    cond = and_(J.c.state.in_([status] if status else FINAL), J.c.finished_at < finished_before)
    if not all_users:
        cond = and_(cond, _owner(user_id))
    async with engine.begin() as conn:
        ids = [r.id for r in (await conn.execute(select(J.c.id).where(cond))).all()]
        for n in range(0, len(ids), 500):
            part = ids[n : n + 500]
            await conn.execute(delete(WD).where(WD.c.job_id.in_(part)))
            await conn.execute(delete(J).where(J.c.id.in_(part)))
    return len(ids)


async def list_indexed_documents(
    engine: AsyncEngine, user_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """The user's documents as their latest succeeded ingest names them (newest first)."""
    q = (
        select(
            J.c.id,
            J.c.document_id,
            J.c.content_type,
            J.c.source_url,
            J.c.finished_at,
            F.c.original_name,
        )
        .select_from(J.outerjoin(F, F.c.id == J.c.file_id))
        .where(_owner(user_id), J.c.kind == "ingest", J.c.state == JobState.succeeded.value)
        .order_by(J.c.id.desc())
    )
    out: dict[str, dict[str, Any]] = {}
    async with engine.begin() as conn:
        for r in (await conn.execute(q)).all():
            doc = r.document_id or r.id
            if doc not in out:
                out[doc] = {
                    "document_id": doc,
                    "task_id": r.id,
                    "content_type": r.content_type,
                    "source": r.source_url or r.original_name,
                    "indexed_at": r.finished_at,
                }
                if len(out) >= limit:
                    break
    return list(out.values())


def can_take(worker: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether this (online) worker could claim this queued job now or once its fallback is due."""
    if job["content_type"] not in (worker["content_types"] or "").split(","):
        return False
    if job["lane"] == DEFAULT_LANE or worker["shared"]:
        return bool(worker["shared"]) and (job["lane"] == DEFAULT_LANE or job["shared_at"] is not None)
    if worker["user_id"] != job["user_id"]:
        return False
    if job["lane"].startswith("gpu-"):
        return bool(worker["serves_gpu"] or (worker["serves_cpu"] and job["fallback_at"] is not None))
    return bool(worker["serves_cpu"])


def unserved_message(job: dict[str, Any]) -> str:
    lane = job["lane"]
    return (
        f"{UNSERVED_PREFIX} takes {job['content_type']} jobs in lane {lane}; it runs once one connects "
        f"(python -m worker --content-types {job['content_type']} ...)"
    )


async def note_unserved(
    engine: AsyncEngine, settings: Settings, ids: list[str] | None = None, limit: int = 500
) -> int:
    """Say in the status message of each queued task whether any online worker can take it.

    Sets the message on tasks nobody can take and clears it once somebody can. Run for the new
    tasks after an enqueue (``ids``) and periodically for the oldest queued ones; returns how many
    messages changed.
    """
    since = utcnow() - timedelta(seconds=settings.worker_ttl_s)
    changed = 0
    async with engine.begin() as conn:
        online = [
            dict(w)
            for w in (
                await conn.execute(
                    select(W.c.user_id, W.c.shared, W.c.serves_gpu, W.c.serves_cpu, W.c.content_types).where(
                        W.c.last_seen_at > since
                    )
                )
            )
            .mappings()
            .all()
        ]
        queued = (
            (
                await conn.execute(
                    select(
                        J.c.id,
                        J.c.user_id,
                        J.c.lane,
                        J.c.content_type,
                        J.c.fallback_at,
                        J.c.shared_at,
                        J.c.progress_message,
                    )
                    .where(
                        J.c.state == JobState.queued.value, *([J.c.id.in_(ids)] if ids is not None else [])
                    )
                    .order_by(J.c.id)
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
        for row in queued:
            job = dict(row)
            served = any(can_take(w, job) for w in online)
            current = job["progress_message"]
            ours = bool(current and current.startswith(UNSERVED_PREFIX))
            want = current
            if not served and (current in (None, "retried") or ours):
                want = unserved_message(job)
            elif served and ours:
                want = None
            if want != current:
                await conn.execute(
                    update(J)
                    .where(J.c.id == job["id"], J.c.state == JobState.queued.value)
                    .values(progress_message=want)
                )
                changed += 1
    return changed


async def all_lanes(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every lane with queued or running jobs (admin view): counts and the oldest waiting job."""
    from sqlalchemy import func

    now = utcnow()
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                select(J.c.lane, U.c.name, J.c.state, func.count(), func.min(J.c.created_at))
                .select_from(J.outerjoin(U, U.c.id == J.c.user_id))
                .where(J.c.state.in_([JobState.queued.value, JobState.running.value]))
                .group_by(J.c.lane, U.c.name, J.c.state)
            )
        ).all()
    lanes: dict[str, dict[str, Any]] = {}
    for lane, user, state, count, oldest in rows:
        entry = lanes.setdefault(
            lane, {"lane": lane, "user": user, "queued": 0, "running": 0, "oldest_queued_age_s": None}
        )
        entry[state] = int(count)
        if state == JobState.queued.value and oldest is not None:
            entry["oldest_queued_age_s"] = round((now - oldest).total_seconds(), 3)
    return sorted(lanes.values(), key=lambda e: e["lane"])


async def list_shared_workers(engine: AsyncEngine, settings: Settings) -> list[dict[str, Any]]:
    """Every shared worker (admin view), shaped like the client's worker list."""
    now = utcnow()
    since = now - timedelta(seconds=settings.worker_ttl_s)
    async with engine.begin() as conn:
        workers = (
            (await conn.execute(select(W).where(W.c.shared.is_(True)).order_by(W.c.last_seen_at.desc())))
            .mappings()
            .all()
        )
        running = (
            await conn.execute(
                select(J.c.id, J.c.worker_key_id, J.c.worker_id).where(
                    J.c.state == JobState.running.value, J.c.worker_key_id.is_not(None)
                )
            )
        ).all()
    return [
        {
            "worker_id": w["worker_id"],
            "name": w["name"],
            "key_id": w["key_id"],
            "shared": True,
            "lanes": [k for k, on in (("gpu", w["serves_gpu"]), ("cpu", w["serves_cpu"])) if on],
            "content_types": [c for c in (w["content_types"] or "").split(",") if c],
            "version": w["version"],
            "first_seen_at": w["first_seen_at"],
            "last_seen_at": w["last_seen_at"],
            "online": w["last_seen_at"] > since,
            "current_jobs": [
                r.id for r in running if (r.worker_key_id, r.worker_id) == (w["key_id"], w["worker_id"])
            ],
        }
        for w in workers
    ]
