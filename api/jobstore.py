"""Every statement on the job and worker tables, one function each.

State changes after the claim are fenced by the lease: ``WHERE id = :id AND lease_token = :token
AND state = 'running'``. Zero rows is a domain error (stale lease, 409), never a silent no-op.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.errors import Conflict, JobCanceledError, NotFound, StaleLease
from api.ids import new_id, new_token, utcnow
from api.keystore import Principal, Scope
from api.models import Job, WebhookDelivery, Worker
from api.notifier import Notifier
from api.settings import Settings
from protocol.errors import ErrorClass
from protocol.states import DEFAULT_LANE, FINAL_STATES, JobState, LaneKind, lane_name

J = Job.__table__  # type: ignore[attr-defined]
W = Worker.__table__  # type: ignore[attr-defined]
WD = WebhookDelivery.__table__  # type: ignore[attr-defined]

QUEUED, RUNNING = JobState.queued.value, JobState.running.value


@dataclass
class NewJob:
    content_type: str
    lane_kind: LaneKind
    kind: str = "process"  # process | ingest
    file_id: str | None = None
    source_url: str | None = None
    options: dict[str, Any] | None = None
    priority: int = 0
    batch_id: str | None = None
    document_id: str | None = None
    webhook_url: str | None = None
    index_options: dict[str, Any] | None = None


def _live_since(settings: Settings, now: datetime) -> datetime:
    return now - timedelta(seconds=settings.worker_ttl_s)


async def _live_lanes(conn: AsyncConnection, user_id: int, since: datetime) -> tuple[bool, bool]:
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
    settings: Settings, owner: Principal, job: NewJob, now: datetime, live: tuple[bool, bool]
) -> dict[str, Any]:
    """The row of one queued job in its lane, with its fallback times from the owner's live lanes."""
    user_id = owner.user_id
    kind = LaneKind.default if user_id is None else job.lane_kind
    fallback_at = shared_at = None
    if user_id is not None and kind is not LaneKind.default:
        gpu_live, cpu_live = live
        if kind is LaneKind.gpu and owner.cpu_fallback:
            fallback_at = now if not gpu_live else now + timedelta(seconds=settings.fallback_after_s)
        if owner.shared_fallback:
            own_live = (gpu_live or (cpu_live and owner.cpu_fallback)) if kind is LaneKind.gpu else cpu_live
            shared_at = now if not own_live else now + timedelta(seconds=settings.shared_fallback_after_s)
    return dict(
        id=new_id(),
        user_id=user_id,
        lane=lane_name(kind, user_id),
        content_type=job.content_type,
        kind=job.kind,
        file_id=job.file_id,
        source_url=job.source_url,
        options=job.options or {},
        state=QUEUED,
        stage="process",
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


async def enqueue_job(
    engine: AsyncEngine, notifier: Notifier, settings: Settings, owner: Principal, job: NewJob
) -> str:
    """Insert a queued job in its lane, with its fallback times, and wake waiting claims."""
    return (await enqueue_jobs(engine, notifier, settings, owner, [job]))[0]


async def enqueue_jobs(
    engine: AsyncEngine, notifier: Notifier, settings: Settings, owner: Principal, jobs: list[NewJob]
) -> list[str]:
    """Insert several queued jobs in one transaction (a batch is all or nothing)."""
    now = utcnow()
    async with engine.begin() as conn:
        live = (False, False)
        if owner.user_id is not None:
            live = await _live_lanes(conn, owner.user_id, _live_since(settings, now))
        rows = [_job_row(settings, owner, job, now, live) for job in jobs]
        await conn.execute(J.insert(), rows)  # one executemany for the whole batch
        await notifier.publish(conn)
    notifier.wake()
    return [row["id"] for row in rows]


# Presence is refreshed at most this often per worker and process (a long-polling claim re-runs
# every second): worker_ttl is a minute, so this costs nothing in accuracy and saves a write.
PRESENCE_REFRESH_S = 5.0
_presence: dict[tuple[int, str | None, str, tuple[Any, ...]], float] = {}


def _presence_fresh(engine: AsyncEngine, who: Principal, worker_id: str, shape: tuple[Any, ...]) -> bool:
    """True when this worker's row was written recently with the same lanes and types."""
    key = (id(engine), who.key_id, worker_id, shape)
    now = time.monotonic()
    if now - _presence.get(key, -PRESENCE_REFRESH_S) < PRESENCE_REFRESH_S:
        return True
    if len(_presence) > 10_000:  # a bound, not a cache policy: workers come and go
        _presence.clear()
    _presence[key] = now
    return False


def _upsert_worker(
    conn: AsyncConnection,
    who: Principal,
    worker_id: str,
    lanes: list[LaneKind],
    content_types: list[str],
    name: str | None,
    version: str | None,
    now: datetime,
) -> Any:
    values = dict(
        key_id=who.key_id,
        worker_id=worker_id,
        user_id=who.user_id,
        shared=who.scope is Scope.shared_worker,
        serves_gpu=LaneKind.gpu in lanes,
        serves_cpu=LaneKind.cpu in lanes,
        content_types=",".join(content_types)[:500],
        name=name,
        version=version,
        first_seen_at=now,
        last_seen_at=now,
    )
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    ins = dialect.insert(W).values(**values)
    changed = {k: ins.excluded[k] for k in values if k not in ("key_id", "worker_id", "first_seen_at")}
    return conn.execute(ins.on_conflict_do_update(index_elements=[W.c.key_id, W.c.worker_id], set_=changed))


_RETURNED: tuple[Any, ...] = (
    J.c.id,
    J.c.lease_token,
    J.c.lease_expires_at,
    J.c.attempt,
    J.c.content_type,
    J.c.options,
    J.c.file_id,
    J.c.source_url,
    J.c.user_id,
    J.c.priority,
)


async def replay_claim(engine: AsyncEngine, who: Principal, claim_id: str) -> list[Row[Any]]:
    """The jobs a previous claim with this idempotency id handed out and still holds."""
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                select(*_RETURNED).where(
                    J.c.claim_id == f"{who.key_id}:{claim_id}", J.c.state == RUNNING, J.c.stage == "process"
                )
            )
        ).all()
    return sorted(rows, key=lambda r: (-r.priority, r.id))


# The claim is built once per shape and reused with bound parameters: building the expression
# costs more Python time than PostgreSQL needs to run it.
_P_NOW = bindparam("now", type_=J.c.run_after.type)
_CLAIM_VALUES: dict[str, Any] = dict(
    state=RUNNING,
    attempt=J.c.attempt + 1,
    lease_token=bindparam("token", type_=J.c.lease_token.type),
    lease_expires_at=bindparam("expires", type_=J.c.lease_expires_at.type),
    claim_id=bindparam("claim_id", type_=J.c.claim_id.type),
    worker_id=bindparam("worker_id", type_=J.c.worker_id.type),
    worker_key_id=bindparam("key_id", type_=J.c.worker_key_id.type),
    started_at=_P_NOW,
    updated_at=_P_NOW,
    progress=0.0,
    progress_message="claimed",
)
_claim_cache: dict[tuple[str, str], Any] = {}


def _claim_shape(who: Principal, lanes: list[LaneKind]) -> str:
    if who.scope is Scope.shared_worker:
        return "shared"  # the default lane, plus users' jobs once their shared fallback is due
    if LaneKind.cpu in lanes and LaneKind.gpu not in lanes:
        return "cpu"  # its user's lanes, plus GPU-lane jobs once their CPU fallback is due
    return "own"


def _build_claim(dialect: str, shape: str) -> Any:
    base = and_(
        J.c.state == QUEUED,
        J.c.run_after <= _P_NOW,
        J.c.content_type.in_(bindparam("ctypes", expanding=True)),
    )
    order = (J.c.priority.desc(), J.c.id)
    if shape == "shared":
        cond = and_(base, or_(J.c.lane == DEFAULT_LANE, J.c.shared_at <= _P_NOW))
        # Fairness: the first job of every user before the second job of any user.
        rank = func.row_number().over(partition_by=J.c.user_id, order_by=order)
        ranked = select(J.c.id.label("id"), rank.label("rn")).where(cond).subquery("ranked")
        top = select(ranked.c.id, ranked.c.rn).order_by(ranked.c.rn, ranked.c.id).limit(bindparam("top_n"))
        top_sq = top.subquery("top")
        cand = (
            select(J.c.id)
            .join(top_sq, top_sq.c.id == J.c.id)
            .where(J.c.state == QUEUED)
            .order_by(top_sq.c.rn, J.c.id)
            .limit(bindparam("n"))
        )
    else:
        # One lane list (lane = ANY(...)), so the planner walks ix_jobs_claim_lane.
        cond = and_(base, J.c.lane.in_(bindparam("lanes", expanding=True)))
        if shape == "cpu":
            gpu = bindparam("gpu_lane", type_=J.c.lane.type)
            cond = and_(cond, or_(J.c.lane != gpu, J.c.fallback_at <= _P_NOW))
        cand = select(J.c.id).where(cond).order_by(*order).limit(bindparam("n"))
    return _lock_and_update(dialect, cand, _CLAIM_VALUES, _RETURNED)


def claim_statement(
    dialect: str, who: Principal, lanes: list[LaneKind], content_types: list[str], max_jobs: int
) -> tuple[Any, dict[str, Any]]:
    """The one atomic claim (lock up to ``max_jobs`` eligible rows, SKIP LOCKED, and lease them)
    and the parameters that pick this worker's lanes and types; add now, token, expires, ids."""
    shape = _claim_shape(who, lanes)
    stmt = _claim_cache.get((dialect, shape))
    if stmt is None:
        stmt = _claim_cache[(dialect, shape)] = _build_claim(dialect, shape)
    params: dict[str, Any] = {"ctypes": list(content_types), "n": max_jobs}
    if shape == "shared":
        params["top_n"] = max_jobs * 2 + 8
    else:
        own = [lane_name(k, who.user_id) for k in lanes if k is not LaneKind.default]
        if shape == "cpu":
            params["gpu_lane"] = lane_name(LaneKind.gpu, who.user_id)
            own.append(params["gpu_lane"])
        params["lanes"] = own
    return stmt, params


def _lock_and_update(dialect: str, cand: Any, values: dict[str, Any], returning: tuple[Any, ...]) -> Any:
    """``UPDATE jobs ... WHERE id IN (cand FOR UPDATE SKIP LOCKED) RETURNING ...`` in one statement."""
    if dialect == "postgresql":
        locked = cand.with_for_update(of=J, skip_locked=True).cte("locked")
        return update(J).where(J.c.id == locked.c.id).values(**values).returning(*returning)
    # SQLite: BEGIN IMMEDIATE already serialises writers, so the plain subquery is atomic.
    return update(J).where(J.c.id.in_(cand.scalar_subquery())).values(**values).returning(*returning)


async def claim_jobs(
    engine: AsyncEngine,
    settings: Settings,
    who: Principal,
    worker_id: str,
    lanes: list[LaneKind],
    content_types: list[str],
    max_jobs: int,
    claim_id: str | None,
    name: str | None = None,
    version: str | None = None,
) -> list[Row[Any]]:
    """Lease up to ``max_jobs`` eligible jobs to this worker in one atomic statement."""
    now = utcnow()
    async with engine.begin() as conn:
        if not _presence_fresh(engine, who, worker_id, (tuple(lanes), tuple(content_types), name, version)):
            await _upsert_worker(conn, who, worker_id, lanes, content_types, name, version, now)
        stmt, params = claim_statement(conn.dialect.name, who, lanes, content_types, max_jobs)
        params.update(
            now=now,
            token=new_token(),
            expires=now + timedelta(seconds=settings.lease_s),
            claim_id=f"{who.key_id}:{claim_id}" if claim_id else None,
            worker_id=worker_id,
            key_id=who.key_id,
        )
        rows = (await conn.execute(stmt, params)).all()
    return sorted(rows, key=lambda r: (-r.priority, r.id))


async def heartbeat(
    engine: AsyncEngine,
    settings: Settings,
    who: Principal,
    job_id: str,
    token: str,
    progress: float | None,
    message: str | None,
) -> tuple[datetime, bool]:
    """Extend the lease and record progress: (new expiry, canceled?)."""
    now = utcnow()
    expires = now + timedelta(seconds=settings.lease_s)
    values: dict[str, Any] = {"lease_expires_at": expires, "updated_at": now}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["progress_message"] = message
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(J)
                .where(
                    J.c.id == job_id, J.c.lease_token == token, J.c.state == RUNNING, J.c.stage == "process"
                )
                .values(**values)
                .returning(J.c.worker_id)
            )
        ).first()
        if row is not None:
            await conn.execute(
                update(W)
                .where(W.c.key_id == who.key_id, W.c.worker_id == row.worker_id)
                .values(last_seen_at=now)
            )
            return expires, False
        current = await _fenced_state(conn, job_id, token)
    if current == JobState.canceled:
        return now, True
    raise StaleLease()


async def _fenced_state(conn: AsyncConnection, job_id: str, token: str) -> str | None:
    """The job's state when ``token`` was its lease, else raise StaleLease (an unknown id too:
    a worker route never tells whether a job id exists)."""
    row = (await conn.execute(select(J.c.state, J.c.lease_token).where(J.c.id == job_id))).first()
    if row is None or row.lease_token != token:
        raise StaleLease()
    return str(row.state)


async def lock_lease(conn: AsyncConnection, job_id: str, token: str) -> Row[Any]:
    """The running job ``token`` leases, row-locked in the caller's transaction (artifact uploads).

    Fenced like heartbeat and complete: unknown job -> NotFound, canceled -> JobCanceledError,
    any other lease or state -> StaleLease.
    """
    row = (
        await conn.execute(
            select(J.c.id, J.c.user_id, J.c.worker_key_id)
            .where(J.c.id == job_id, J.c.lease_token == token, J.c.state == RUNNING, J.c.stage == "process")
            .with_for_update()
        )
    ).first()
    if row is None:
        if await _fenced_state(conn, job_id, token) == JobState.canceled:
            raise JobCanceledError()
        raise StaleLease()
    return row


def _build_complete() -> Any:
    ingest = J.c.kind == "ingest"
    now = bindparam("now", type_=J.c.updated_at.type)
    return (
        update(J)
        .where(
            J.c.id == bindparam("job_id", type_=J.c.id.type),
            J.c.lease_token == bindparam("token", type_=J.c.lease_token.type),
            J.c.state == RUNNING,
            J.c.stage == "process",
        )
        .values(
            state=case((ingest, literal(RUNNING)), else_=literal(JobState.succeeded.value)),
            stage=case((ingest, literal("index")), else_=literal("done")),
            result=bindparam("result", type_=J.c.result.type),
            progress=case((ingest, literal(0.9)), else_=literal(1.0)),
            progress_message=case((ingest, literal("indexing")), else_=literal("done")),
            lease_expires_at=None,
            index_next_at=now,
            finished_at=case((ingest, None), else_=now),
            updated_at=now,
            error=None,
            error_class=None,
        )
        .returning(J.c.state)
    )


_COMPLETE = _build_complete()  # built once; see the claim for why


async def complete_job(
    engine: AsyncEngine, notifier: Notifier, job_id: str, token: str, markdown: str, metadata: dict[str, Any]
) -> str:
    """Store the result and finish the job (ingest jobs move on to indexing) in one transaction."""
    now = utcnow()
    params = {
        "job_id": job_id,
        "token": token,
        "result": {"markdown": markdown, "metadata": metadata},
        "now": now,
    }
    async with engine.begin() as conn:
        row = (await conn.execute(_COMPLETE, params)).first()
        if row is not None:
            await notifier.publish(conn)
            state = str(row.state)
        else:
            state = await _fenced_state(conn, job_id, token) or ""
            replay = (await conn.execute(select(J.c.stage).where(J.c.id == job_id))).scalar()
            if state == JobState.canceled:
                raise JobCanceledError()
            if replay == "process" or state not in (JobState.succeeded, RUNNING):
                raise StaleLease()
            # Same lease, already completed: a retried completion gets the same answer.
    notifier.wake()
    return state


def retry_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) of the step, capped."""
    step = min(settings.retry_max_s, settings.retry_base_s * 2 ** max(attempt - 1, 0))
    return float(step * (0.5 + random.random()))


async def fail_job(
    engine: AsyncEngine,
    notifier: Notifier,
    settings: Settings,
    job_id: str,
    token: str,
    error: str,
    error_class: ErrorClass,
    retryable: bool,
) -> tuple[str, datetime | None]:
    """Record a failure: retry later, or end ``failed`` / ``dead``. Returns (state, retry_at)."""
    now = utcnow()
    async with engine.begin() as conn:
        cur = (
            await conn.execute(
                select(J.c.attempt, J.c.max_attempts)
                .where(
                    J.c.id == job_id, J.c.lease_token == token, J.c.state == RUNNING, J.c.stage == "process"
                )
                .with_for_update()
            )
        ).first()
        if cur is None:
            state = await _fenced_state(conn, job_id, token)
            if state == JobState.canceled:
                return JobState.canceled.value, None
            raise StaleLease()
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
            retry_at = now + timedelta(seconds=retry_delay(settings, cur.attempt))
            values.update(
                state=QUEUED,
                run_after=retry_at,
                worker_id=None,
                progress_message=f"retrying after: {error[:200]}",
            )
        await conn.execute(update(J).where(J.c.id == job_id, J.c.lease_token == token).values(**values))
        if values["state"] == QUEUED:
            await notifier.publish(conn)
    if values["state"] == QUEUED:
        notifier.wake()
    return str(values["state"]), retry_at


async def release_expired(engine: AsyncEngine, notifier: Notifier) -> int:
    """Return jobs with expired leases to the queue (``dead`` once out of attempts)."""
    now = utcnow()
    out_of_attempts = J.c.attempt >= J.c.max_attempts
    async with engine.begin() as conn:
        res = await conn.execute(
            update(J)
            .where(J.c.state == RUNNING, J.c.stage == "process", J.c.lease_expires_at < now)
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
        )
        count = int(res.rowcount or 0)
        if count:
            await notifier.publish(conn)
    if count:
        notifier.wake()
    return count


async def sweep_fallback(engine: AsyncEngine, notifier: Notifier, settings: Settings) -> int:
    """Make jobs of users whose lane has no live worker claimable by their fallback now."""
    now = utcnow()
    since = _live_since(settings, now)
    live = select(W.c.user_id).where(W.c.shared.is_(False), W.c.last_seen_at > since)
    gpu_live = live.where(W.c.serves_gpu)
    cpu_live = live.where(W.c.serves_cpu)
    async with engine.begin() as conn:
        a = await conn.execute(
            update(J)
            .where(J.c.state == QUEUED, J.c.fallback_at > now, J.c.user_id.not_in(gpu_live))
            .values(fallback_at=now)
        )
        gpu_lane = J.c.lane.like("gpu-tasks-%")
        b = await conn.execute(
            update(J)
            .where(
                J.c.state == QUEUED,
                J.c.shared_at > now,
                or_(
                    and_(gpu_lane, J.c.user_id.not_in(gpu_live), J.c.user_id.not_in(cpu_live)),
                    and_(~gpu_lane, J.c.user_id.not_in(cpu_live)),
                ),
            )
            .values(shared_at=now)
        )
        count = int((a.rowcount or 0) + (b.rowcount or 0))
        if count:
            await notifier.publish(conn)
    if count:
        notifier.wake()
    return count


async def cancel_job(engine: AsyncEngine, user_id: int | None, job_id: str) -> str:
    """Cancel a queued or running job of this user; a running one learns it at its next heartbeat."""
    now = utcnow()
    async with engine.begin() as conn:
        res = await conn.execute(
            update(J)
            .where(J.c.id == job_id, _owner(user_id), J.c.state.in_([QUEUED, RUNNING]))
            .values(
                state=JobState.canceled.value,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                progress_message="canceled",
            )
        )
        if res.rowcount:
            return JobState.canceled.value
        state = (await conn.execute(select(J.c.state).where(J.c.id == job_id, _owner(user_id)))).scalar()
    if state is None:
        raise NotFound("no such task", code="task_not_found")
    raise Conflict(f"the task already ended ({state})", code="task_finished")


def _owner(user_id: int | None) -> Any:
    return J.c.user_id.is_(None) if user_id is None else J.c.user_id == user_id


async def get_job(engine: AsyncEngine, user_id: int | None, job_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        row = (await conn.execute(select(J).where(J.c.id == job_id, _owner(user_id)))).mappings().first()
    if row is None:
        raise NotFound("no such task", code="task_not_found")
    return dict(row)


async def get_job_any(engine: AsyncEngine, job_id: str) -> dict[str, Any] | None:
    async with engine.begin() as conn:
        row = (await conn.execute(select(J).where(J.c.id == job_id))).mappings().first()
    return dict(row) if row else None


async def list_jobs(
    engine: AsyncEngine, user_id: int | None, state: str | None, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """The user's jobs, newest first; ``cursor`` is the last id of the previous page."""
    q = select(J).where(_owner(user_id))
    if state:
        q = q.where(J.c.state == state)
    if cursor:
        q = q.where(J.c.id < cursor)
    async with engine.begin() as conn:
        rows = (await conn.execute(q.order_by(J.c.id.desc()).limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def queue_stats(engine: AsyncEngine, settings: Settings, user_id: int | None) -> list[dict[str, Any]]:
    """Per lane: jobs by state, oldest waiting age, workers online (the caller's lanes + default)."""
    now = utcnow()
    lanes = [DEFAULT_LANE]
    if user_id is not None:
        lanes = [lane_name(LaneKind.gpu, user_id), lane_name(LaneKind.cpu, user_id), DEFAULT_LANE]
    async with engine.begin() as conn:
        counts = (
            await conn.execute(
                select(J.c.lane, J.c.state, func.count(), func.min(J.c.created_at))
                .where(J.c.lane.in_(lanes))
                .group_by(J.c.lane, J.c.state)
            )
        ).all()
        since = _live_since(settings, now)
        workers = (
            await conn.execute(
                select(W.c.user_id, W.c.shared, W.c.serves_gpu, W.c.serves_cpu).where(
                    W.c.last_seen_at > since
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
            {
                "lane": lane,
                **by_state,
                "oldest_queued_age_s": round((now - oldest).total_seconds(), 3) if oldest else None,
                "workers_online": online,
            }
        )
    return out


async def list_workers(engine: AsyncEngine, settings: Settings, user_id: int | None) -> list[dict[str, Any]]:
    """The user's workers with their current jobs."""
    now = utcnow()
    async with engine.begin() as conn:
        workers = (
            (await conn.execute(select(W).where(W.c.user_id == user_id).order_by(W.c.last_seen_at.desc())))
            .mappings()
            .all()
        )
        running = (
            await conn.execute(
                select(J.c.id, J.c.worker_key_id, J.c.worker_id).where(
                    J.c.state == RUNNING, J.c.stage == "process", J.c.worker_key_id.is_not(None)
                )
            )
        ).all()
    since = _live_since(settings, now)
    out = []
    for w in workers:
        lanes = [k for k, on in (("gpu", w["serves_gpu"]), ("cpu", w["serves_cpu"])) if on]
        out.append(
            {
                "worker_id": w["worker_id"],
                "name": w["name"],
                "key_id": w["key_id"],
                "shared": w["shared"],
                "lanes": lanes,
                "content_types": [c for c in (w["content_types"] or "").split(",") if c],
                "version": w["version"],
                "first_seen_at": w["first_seen_at"],
                "last_seen_at": w["last_seen_at"],
                "online": w["last_seen_at"] > since,
                "current_jobs": [
                    r.id for r in running if r.worker_key_id == w["key_id"] and r.worker_id == w["worker_id"]
                ],
            }
        )
    return out


def is_final(state: str) -> bool:
    return state in {s.value for s in FINAL_STATES}


async def wait_for_final(
    engine: AsyncEngine,
    notifier: Notifier,
    settings: Settings,
    user_id: int | None,
    job_id: str,
    timeout: float,
) -> dict[str, Any]:
    """The job once it is final, or as it stands after ``timeout`` seconds (woken by the notifier)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        wake = notifier.generation  # grab before reading, so a completion in between is not missed
        row = await get_job(engine, user_id, job_id)
        remaining = deadline - loop.time()
        if is_final(row["state"]) or remaining <= 0:
            return row
        # Re-check now and then too: another server process may finish it (PostgreSQL wakes us, SQLite not).
        await notifier.wait(wake, min(remaining, max(settings.claim_recheck_s, 0.05)))


async def list_batch_jobs(engine: AsyncEngine, user_id: int | None, batch_id: str) -> list[dict[str, Any]]:
    """The caller's jobs of one batch, in submission order."""
    async with engine.begin() as conn:
        rows = (
            (
                await conn.execute(
                    select(
                        J.c.id, J.c.state, J.c.stage, J.c.progress, J.c.error, J.c.created_at, J.c.finished_at
                    )
                    .where(J.c.batch_id == batch_id, _owner(user_id))
                    .order_by(J.c.id)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def list_webhooks_due(engine: AsyncEngine, ended_since: datetime, limit: int = 100) -> list[str]:
    """Jobs that ended after ``ended_since`` with a webhook_url and no successful delivery yet."""
    delivered = select(WD.c.job_id).where(WD.c.delivered.is_(True))
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
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
        ).all()
    return [r.id for r in rows]


# --- Indexing stage (ingest jobs after the worker's result) -------------------------------------


async def claim_index_work(engine: AsyncEngine, limit: int, hold_s: float) -> list[dict[str, Any]]:
    """Take up to ``limit`` jobs due for indexing, holding them for ``hold_s`` (other servers skip them)."""
    now = utcnow()
    due = and_(J.c.state == RUNNING, J.c.stage == "index", J.c.index_next_at <= now)
    cand = select(J.c.id).where(due).order_by(J.c.index_next_at, J.c.id).limit(limit)
    values = {"index_next_at": now + timedelta(seconds=hold_s), "index_attempts": J.c.index_attempts + 1}
    async with engine.begin() as conn:
        stmt = _lock_and_update(conn.dialect.name, cand, values, tuple(J.c))
        rows = (await conn.execute(stmt)).mappings().all()
    return [dict(r) for r in rows]


async def _update_indexing(engine: AsyncEngine, job_id: str, values: dict[str, Any]) -> bool:
    """Change an ingest job still in its indexing stage (a canceled one stays canceled)."""
    async with engine.begin() as conn:
        res = await conn.execute(
            update(J).where(J.c.id == job_id, J.c.state == RUNNING, J.c.stage == "index").values(**values)
        )
    return bool(res.rowcount)


async def finish_indexing(engine: AsyncEngine, job_id: str, result: dict[str, Any], message: str) -> bool:
    """Indexed: the ingest job succeeds."""
    now = utcnow()
    return await _update_indexing(
        engine,
        job_id,
        {
            "state": JobState.succeeded.value,
            "stage": "done",
            "result": result,
            "progress": 1.0,
            "progress_message": message,
            "finished_at": now,
            "updated_at": now,
            "index_next_at": None,
            "error": None,
            "error_class": None,
        },
    )


async def defer_indexing(engine: AsyncEngine, job_id: str, retry_at: datetime, reason: str) -> bool:
    """Indexing hit a passing outage: show why on the task and try again at ``retry_at``."""
    return await _update_indexing(
        engine,
        job_id,
        {
            "index_next_at": retry_at,
            "progress_message": f"waiting for indexing: {reason}"[:500],
            "error": reason,
            "error_class": "indexing_delayed",
            "updated_at": utcnow(),
        },
    )


async def fail_indexing(engine: AsyncEngine, job_id: str, reason: str) -> bool:
    """Indexing failed for good: the task ends ``failed`` (its processed result is kept)."""
    now = utcnow()
    return await _update_indexing(
        engine,
        job_id,
        {
            "state": JobState.failed.value,
            "error": reason,
            "error_class": "indexing_failed",
            "progress_message": "indexing failed",
            "finished_at": now,
            "updated_at": now,
            "index_next_at": None,
        },
    )


async def release_claimed(engine: AsyncEngine, notifier: Notifier, rows: list[Row[Any]]) -> int:
    """Give back jobs just leased to a worker that left before it got the answer (not an attempt)."""
    now = utcnow()
    count = 0
    async with engine.begin() as conn:
        for r in rows:
            res = await conn.execute(
                update(J)
                .where(J.c.id == r.id, J.c.lease_token == r.lease_token)
                .where(J.c.state == RUNNING, J.c.stage == "process")
                .values(
                    state=QUEUED,
                    attempt=J.c.attempt - 1,
                    lease_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                    claim_id=None,
                    run_after=now,
                    updated_at=now,
                    progress_message="released: the worker left before it got the job",
                )
            )
            count += int(res.rowcount or 0)
        if count:
            await notifier.publish(conn)
    if count:
        notifier.wake()
    return count
