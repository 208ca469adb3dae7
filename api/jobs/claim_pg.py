"""The claim on PostgreSQL: one ordered index probe per lane, merged, so depth costs nothing.

A single ``lane = ANY(...)`` scan cannot return two lanes in ``priority DESC, id`` order, so the
planner used to read and sort every queued row of the worker's lanes on each claim. Here every
part of a claim is its own ``ORDER BY .. LIMIT n`` walk of a partial index, and only those few
rows are merged:

- own lanes       one CTE per lane on ``ix_jobs_claim_lane`` (lane, priority DESC, id), each
                  ``FOR UPDATE SKIP LOCKED``; the merge keeps the best n;
- CPU fallback    a CPU-only worker adds its GPU lane's *due* jobs on ``ix_jobs_claim_fallback_lane``
                  (lane, fallback_at, id): a range scan that reads due rows only, oldest due first;
- shared          the default lane on ``ix_jobs_claim_lane``, plus a LATERAL probe per user who
                  allows the shared fallback on ``ix_jobs_claim_shared_user`` (user_id, shared_at,
                  id): at most n due jobs per user, numbered 1..n. Each number is raised by the
                  jobs that user already has running (a count on ``ix_jobs_running_user``), and
                  the merge takes the lowest numbers: a user with nothing running is served
                  before the next job of a user whose flood fills the workers, and two busy users
                  alternate. Nothing ranks the whole table; the work grows with users and running
                  jobs, not with queued jobs. No other index leads with ``shared_at``: the planner,
                  which prices a probe by the average user, walked one by ``shared_at`` alone
                  filtered on the user, which for a user with nothing queued reads every due row
                  of the user who floods (migration 0008).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    func,
    select,
    true,
    union_all,
    update,
)

from api.jobs.base import QUEUED, RUNNING
from api.jobs.tables import JOBS as J
from api.jobs.tables import USERS as U
from protocol.states import DEFAULT_LANE


def _base(now: Any) -> ColumnElement[bool]:
    return and_(
        J.c.state == QUEUED,
        J.c.run_after <= now,
        # One array parameter, not an expanding IN list: the statement's text stays the same
        # for any number of types, so the driver can send it prepared (api.jobs.base._direct).
        J.c.content_type == any_(bindparam("ctypes", type_=ARRAY(String()))),
    )


def lanes_claim(
    n_lanes: int, fallback: bool, now: Any, values: dict[str, Any], returning: tuple[Any, ...]
) -> Any:
    """Own lanes (``lane0``..), and with ``fallback`` the due jobs of lane ``gpu_lane``."""
    n = bindparam("n", type_=Integer())
    parts = []
    for i in range(n_lanes):
        lane = bindparam(f"lane{i}", type_=J.c.lane.type)
        walk = (
            select(J.c.id, J.c.priority)
            .where(_base(now), J.c.lane == lane)
            .order_by(J.c.priority.desc(), J.c.id)
            .limit(n)
            .with_for_update(skip_locked=True)
            .cte(f"lane{i}")
        )
        parts.append(select(walk.c.id, walk.c.priority))
    if fallback:
        gpu = bindparam("gpu_lane", type_=J.c.lane.type)
        due = (
            select(J.c.id, J.c.priority)
            .where(_base(now), J.c.lane == gpu, J.c.fallback_at <= now)
            .order_by(J.c.fallback_at, J.c.id)
            .limit(n)
            .with_for_update(skip_locked=True)
            .cte("fallback")
        )
        parts.append(select(due.c.id, due.c.priority))
    merged = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("merged")
    best = select(merged.c.id).order_by(merged.c.priority.desc(), merged.c.id).limit(n)
    return update(J).where(J.c.id.in_(best.scalar_subquery())).values(**values).returning(*returning)


def running_jobs(user_id: Any) -> Any:
    """How many jobs of this user run now: the fair share's weight (``ix_jobs_running_user``)."""
    r = J.alias("running")
    return (
        select(func.count())
        .select_from(r)
        .where(r.c.user_id == user_id, r.c.state == RUNNING)
        .scalar_subquery()
    )


def shared_claim(now: Any, values: dict[str, Any], returning: tuple[Any, ...]) -> Any:
    """The default lane and every user's due shared-fallback jobs, round-robin over users."""
    n = bindparam("n", type_=Integer())
    head = (
        select(J.c.id, J.c.user_id, J.c.priority)
        .where(_base(now), J.c.lane == DEFAULT_LANE)
        .order_by(J.c.priority.desc(), J.c.id)
        .limit(bindparam("top_n", type_=Integer()))
        .subquery("default_head")
    )
    # Numbered after the LIMIT: a window over the WHERE would number the whole lane.
    by_user = func.row_number().over(
        partition_by=head.c.user_id, order_by=(head.c.priority.desc(), head.c.id)
    )
    # A job's turn: its place in its user's queue plus the jobs that user already has running.
    default = select(head.c.id, (by_user + running_jobs(head.c.user_id)).label("rn")).subquery("default_lane")
    # Per user who allows it: the first n due jobs (an index range walk), numbered after the LIMIT.
    per_user = (
        select(J.c.id, J.c.shared_at)
        .where(_base(now), J.c.user_id == U.c.id, J.c.shared_at <= now)
        .order_by(J.c.shared_at, J.c.id)
        .limit(n)
        .lateral("per_user")
    )
    rank = func.row_number().over(partition_by=U.c.id, order_by=(per_user.c.shared_at, per_user.c.id))
    fallback = (
        select(per_user.c.id, (rank + running_jobs(U.c.id)).label("rn"))
        .select_from(U.join(per_user, true()))
        .where(U.c.shared_fallback.is_(True))
    )
    merged = union_all(select(default.c.id, default.c.rn), fallback).subquery("merged")
    top = (
        select(merged.c.id, merged.c.rn)
        .order_by(merged.c.rn, merged.c.id)
        .limit(bindparam("top_n"))
        .subquery("top")
    )
    # Lock in rank order, skipping rows another claim holds (those are gone from its queue anyway).
    locked = (
        select(J.c.id)
        .join(top, top.c.id == J.c.id)
        .where(J.c.state == QUEUED)
        .order_by(top.c.rn, J.c.id)
        .limit(n)
        .with_for_update(of=J, skip_locked=True)
        .cte("locked")
    )
    return update(J).where(J.c.id == locked.c.id).values(**values).returning(*returning)
