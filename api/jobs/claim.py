"""The claim: one atomic statement leases up to n eligible jobs to a worker (SKIP LOCKED).

Three shapes, by who asks: ``own`` (a worker's own lanes), ``cpu`` (a CPU-only worker: its CPU
lane plus GPU-lane jobs whose CPU fallback is due) and ``shared`` (an operator's shared worker:
the default lane plus users' jobs whose shared fallback is due, the first job of every user before
the second of any). Each statement is built once per shape and dialect and reused with bound
parameters: building the expression costs more Python time than PostgreSQL needs to run it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from api.ids import new_token, utcnow
from api.jobs import claim_pg
from api.jobs.base import QUEUED, RUNNING, StoreBase, fetch_direct
from api.jobs.records import LeasedJob, TaskStage
from api.jobs.tables import JOBS as J
from api.jobs.tables import USERS as U
from api.jobs.tables import WORKERS as W
from api.keystore import Principal, Scope
from api.waiters import ANY_USER_LANE, ClaimKey
from protocol.states import DEFAULT_LANE, LaneKind, lane_name


class ClaimShape(StrEnum):
    own = "own"
    cpu = "cpu"
    shared = "shared"


RETURNED: tuple[Any, ...] = (
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
_P_NOW = bindparam("now", type_=J.c.run_after.type)
# What every lease writes besides its own token, times and holder (a claim's and a hand-off's).
_LEASED: dict[str, Any] = dict(state=RUNNING, progress=0.0, progress_message="claimed")
_CLAIM_VALUES: dict[str, Any] = dict(
    _LEASED,
    attempt=J.c.attempt + 1,
    lease_token=bindparam("token", type_=J.c.lease_token.type),
    lease_expires_at=bindparam("expires", type_=J.c.lease_expires_at.type),
    claim_id=bindparam("claim_id", type_=J.c.claim_id.type),
    worker_id=bindparam("worker_id", type_=J.c.worker_id.type),
    worker_key_id=bindparam("key_id", type_=J.c.worker_key_id.type),
    started_at=_P_NOW,
    updated_at=_P_NOW,
)
_claim_cache: dict[tuple[str, ClaimShape, int], Any] = {}


def claim_ref(who: Principal, claim_id: str | None) -> str | None:
    """A claim's idempotency id as stored on its jobs: per key, so keys cannot collide."""
    return f"{who.key_id}:{claim_id}" if claim_id else None


def handoff_lease(
    who: Principal, worker_id: str, claim_id: str | None, lease_s: float, now: datetime
) -> dict[str, Any]:
    """The columns a claim writes (``_CLAIM_VALUES``) for a new job leased to a waiting claim by
    its own insert (``api.waiters``): its first attempt, a fresh lease token."""
    return dict(
        _LEASED,
        attempt=1,
        lease_token=new_token(),
        lease_expires_at=now + timedelta(seconds=lease_s),
        claim_id=claim_ref(who, claim_id),
        worker_id=worker_id,
        worker_key_id=who.key_id,
        started_at=now,
        updated_at=now,
    )


def claim_shape(who: Principal, lanes: list[LaneKind]) -> ClaimShape:
    """Decided per claim from the key's user as it is now: a fallback turned on frees queued jobs."""
    if who.scope is Scope.shared_worker:
        return ClaimShape.shared
    if LaneKind.cpu in lanes and LaneKind.gpu not in lanes and who.cpu_fallback:
        return ClaimShape.cpu
    return ClaimShape.own


def claim_key(who: Principal, lanes: list[LaneKind], content_types: list[str]) -> ClaimKey:
    """Which queued jobs this claim could take, for the waiter registry (api.waiters)."""
    shape = claim_shape(who, lanes)
    ctypes = frozenset(content_types)
    if shape is ClaimShape.shared:
        return ClaimKey(who.key_id, frozenset({DEFAULT_LANE}), frozenset({ANY_USER_LANE}), ctypes)
    own = frozenset(lane_name(k, who.user_id) for k in lanes if k is not LaneKind.default)
    fallback = frozenset({lane_name(LaneKind.gpu, who.user_id)}) if shape is ClaimShape.cpu else frozenset()
    return ClaimKey(who.key_id, own, fallback, ctypes)


def lock_and_update(dialect: str, cand: Any, values: dict[str, Any], returning: tuple[Any, ...]) -> Any:
    """``UPDATE jobs ... WHERE id IN (cand FOR UPDATE SKIP LOCKED) RETURNING ...`` in one statement."""
    if dialect == "postgresql":
        locked = cand.with_for_update(of=J, skip_locked=True).cte("locked")
        return update(J).where(J.c.id == locked.c.id).values(**values).returning(*returning)
    # SQLite: BEGIN IMMEDIATE already serialises writers, so the plain subquery is atomic.
    return update(J).where(J.c.id.in_(cand.scalar_subquery())).values(**values).returning(*returning)


def _build_claim(dialect: str, shape: ClaimShape, n_lanes: int) -> Any:
    if dialect == "postgresql" and shape is ClaimShape.shared:
        return claim_pg.shared_claim(_P_NOW, _CLAIM_VALUES, RETURNED)
    if dialect == "postgresql" and n_lanes > 0:
        return claim_pg.lanes_claim(n_lanes, shape is ClaimShape.cpu, _P_NOW, _CLAIM_VALUES, RETURNED)
    return _build_claim_generic(dialect, shape)


def _build_claim_generic(dialect: str, shape: ClaimShape) -> Any:
    """SQLite (one writer at a time, small queues): one statement over the lane list."""
    base = and_(
        J.c.state == QUEUED,
        J.c.run_after <= _P_NOW,
        J.c.content_type.in_(bindparam("ctypes", expanding=True)),
    )
    order = (J.c.priority.desc(), J.c.id)
    if shape is ClaimShape.shared:
        # Users' jobs only while their owner allows the shared fallback (read now, not at enqueue).
        allowed = J.c.user_id.in_(select(U.c.id).where(U.c.shared_fallback.is_(True)))
        cond = and_(base, or_(J.c.lane == DEFAULT_LANE, and_(J.c.shared_at <= _P_NOW, allowed)))
        # Fairness: a job's turn is its place in its user's queue plus the jobs that user already
        # has running, lowest first (as api/jobs/claim_pg.py): the first job of every user before
        # the second of any, and a user with nothing running before one whose flood fills the workers.
        rank = func.row_number().over(partition_by=J.c.user_id, order_by=order)
        r = J.alias("running")
        running = (
            select(r.c.user_id, func.count().label("n"))
            .where(r.c.state == RUNNING)
            .group_by(r.c.user_id)
            .subquery("running_per_user")
        )
        ranked = (
            select(J.c.id.label("id"), (rank + func.coalesce(running.c.n, 0)).label("rn"))
            .select_from(J.outerjoin(running, running.c.user_id == J.c.user_id))
            .where(cond)
            .subquery("ranked")
        )
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
        if shape is ClaimShape.cpu:
            gpu = bindparam("gpu_lane", type_=J.c.lane.type)
            cond = and_(cond, or_(J.c.lane != gpu, J.c.fallback_at <= _P_NOW))
        cand = select(J.c.id).where(cond).order_by(*order).limit(bindparam("n"))
    return lock_and_update(dialect, cand, _CLAIM_VALUES, RETURNED)


def claim_statement(
    dialect: str, who: Principal, lanes: list[LaneKind], content_types: list[str], max_jobs: int
) -> tuple[Any, dict[str, Any]]:
    """The one atomic claim for this worker's shape and the parameters that pick its lanes and
    types; the caller adds now, token, expires and the ids."""
    shape = claim_shape(who, lanes)
    params: dict[str, Any] = {"ctypes": list(content_types), "n": max_jobs}
    own: list[str] = []
    if shape is ClaimShape.shared:
        params["top_n"] = max_jobs * 2 + 8
    else:
        own = sorted({lane_name(k, who.user_id) for k in lanes if k is not LaneKind.default})
        params.update({f"lane{i}": lane for i, lane in enumerate(own)})
        if shape is ClaimShape.cpu:
            params["gpu_lane"] = lane_name(LaneKind.gpu, who.user_id)
        params["lanes"] = [*own, params["gpu_lane"]] if shape is ClaimShape.cpu else own
    key = (dialect, shape, len(own))
    stmt = _claim_cache.get(key)
    if stmt is None:
        stmt = _claim_cache[key] = _build_claim(dialect, shape, len(own))
    return stmt, params


def leased_job(r: Any) -> LeasedJob:
    """One leased job from a row with the ``RETURNED`` columns as attributes."""
    return LeasedJob(
        id=r.id,
        lease_token=r.lease_token,
        lease_expires_at=r.lease_expires_at,
        attempt=r.attempt,
        content_type=r.content_type,
        options=r.options or {},
        file_id=r.file_id,
        source_url=r.source_url,
        user_id=r.user_id,
        priority=r.priority,
    )


def _leased(rows: list[Any]) -> list[LeasedJob]:
    return sorted(map(leased_job, rows), key=lambda j: (-j.priority, j.id))


def _presence_shape(
    lanes: list[LaneKind], content_types: list[str], name: str | None, version: str | None, device: str | None
) -> tuple[Any, ...]:
    """What a worker's presence row says of it: a claim with another shape writes the row again."""
    return (tuple(lanes), tuple(content_types), name, version, device)


_WORKER_COLUMNS = (
    "key_id",
    "worker_id",
    "user_id",
    "shared",
    "serves_gpu",
    "serves_cpu",
    "content_types",
    "name",
    "version",
    "device",
    "first_seen_at",
    "last_seen_at",
)
_upsert_cache: dict[str, Any] = {}


def _upsert_statement(dialect: str) -> Any:
    """A worker's presence row, inserted or updated (its first-seen time kept): built once per
    dialect with bound parameters ``w_<column>``. Building it per claim cost ~1 ms of Python, 1,000
    times over when 1,000 workers come back after a restart."""
    stmt = _upsert_cache.get(dialect)
    if stmt is None:
        ins = (postgresql if dialect == "postgresql" else sqlite).insert(W)
        ins = ins.values({c: bindparam(f"w_{c}", type_=W.c[c].type) for c in _WORKER_COLUMNS})
        keep = ("key_id", "worker_id", "first_seen_at")
        changed = {c: ins.excluded[c] for c in _WORKER_COLUMNS if c not in keep}
        stmt = _upsert_cache[dialect] = ins.on_conflict_do_update(
            index_elements=[W.c.key_id, W.c.worker_id], set_=changed
        )
    return stmt


class ClaimStore(StoreBase):
    async def _upsert_worker(
        self,
        conn: AsyncConnection,
        who: Principal,
        worker_id: str,
        lanes: list[LaneKind],
        content_types: list[str],
        name: str | None,
        version: str | None,
        device: str | None,
        now: datetime,
    ) -> None:
        values: dict[str, Any] = dict(
            key_id=who.key_id,
            worker_id=worker_id,
            user_id=who.user_id,
            shared=who.scope is Scope.shared_worker,
            serves_gpu=LaneKind.gpu in lanes,
            serves_cpu=LaneKind.cpu in lanes,
            content_types=",".join(content_types)[:500],
            name=name,
            version=version,
            device=device,
            first_seen_at=now,
            last_seen_at=now,
        )
        await conn.execute(_upsert_statement(conn.dialect.name), {f"w_{k}": v for k, v in values.items()})

    def presence_kept(
        self,
        who: Principal,
        worker_id: str,
        lanes: list[LaneKind],
        content_types: list[str],
        name: str | None = None,
        version: str | None = None,
        device: str | None = None,
    ) -> bool:
        """For a long-poll that waits without running its claim (``api.waiters``): True when this
        worker's row needs no write with a claim (this process knows it, with these lanes and
        types), its refresh queued when due as a claim would queue it; False: the claim must run."""
        shape = _presence_shape(lanes, content_types, name, version, device)
        if (who.key_id, worker_id, shape) not in self._presence:
            return False
        self._presence_due(who, worker_id, shape, utcnow())
        return True

    async def replay_claim(self, who: Principal, claim_id: str) -> list[LeasedJob]:
        """The jobs a previous claim with this idempotency id handed out and still holds."""
        async with self.autocommit.connect() as conn:  # one read: no transaction round trips
            rows = (
                await conn.execute(
                    select(*RETURNED).where(
                        J.c.claim_id == claim_ref(who, claim_id),
                        J.c.state == RUNNING,
                        J.c.stage == TaskStage.process.value,
                    )
                )
            ).all()
        return _leased(list(rows))

    async def claim(
        self,
        who: Principal,
        worker_id: str,
        lanes: list[LaneKind],
        content_types: list[str],
        max_jobs: int,
        claim_id: str | None,
        name: str | None = None,
        version: str | None = None,
        device: str | None = None,
    ) -> list[LeasedJob]:
        """Lease up to ``max_jobs`` eligible jobs to this worker in one atomic statement.

        On PostgreSQL that statement runs on its own (autocommit: no BEGIN/COMMIT round trips)
        unless this is a worker's first claim here (or its lanes or types changed): its presence
        row then joins the claim in one transaction. Later refreshes of that row are batched
        (:meth:`flush_presence`): 1,000 workers re-polling in the same second were 1,000 write
        transactions, and a submission (timed by curl) waited up to 1.2 s behind them."""
        now = utcnow()
        shape = _presence_shape(lanes, content_types, name, version, device)
        dialect = self.engine.dialect.name
        stmt, params = claim_statement(dialect, who, lanes, content_types, max_jobs)
        params.update(
            now=now,
            token=new_token(),
            expires=now + timedelta(seconds=self.settings.lease_s),
            claim_id=claim_ref(who, claim_id),
            worker_id=worker_id,
            key_id=who.key_id,
        )
        write_presence = self._presence_due(who, worker_id, shape, now)
        if not write_presence and dialect == "postgresql":  # one statement, sent by the driver itself
            return _leased(await fetch_direct(self.engine, stmt, params))
        async with self.engine.begin() as conn:
            if write_presence:
                await self._upsert_worker(
                    conn, who, worker_id, lanes, content_types, name, version, device, now
                )
            rows = (await conn.execute(stmt, params)).all()
        return _leased(list(rows))
