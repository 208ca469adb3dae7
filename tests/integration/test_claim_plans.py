"""Every claim shape reads a handful of rows whatever the queue depth (PostgreSQL, 50,000 queued).

Each test queues tens of thousands of rows with generate_series, runs the real claim once to
capture the statement the driver receives, then runs it again under ``EXPLAIN (ANALYZE, FORMAT
JSON)`` in a rolled-back transaction and counts the rows every plan node produced. A sequential
scan, a sort of the lane or a window over the whole table would produce tens of thousands.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import asyncpg
import pytest
from sqlalchemy import event, text

from api.keystore import Scope
from protocol.states import LaneKind
from tests.factories import make_user

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]

DEPTH = 50_000
MAX_ROWS_TOUCHED = 1_000  # what a claim of 4 may read in total, over every node of its plan
MAX_PAGES = 250  # and the pages it may read (a claim of 4 here: 80-130)


async def _queue(store: Any, user_id: int | None, lane: str, count: int, prefix: str, **times: str) -> None:
    """``count`` queued echo jobs in ``lane``; ``times`` are SQL expressions over ``g``."""
    fallback = times.get("fallback_at", "NULL")
    shared = times.get("shared_at", "NULL")
    async with store.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO jobs (id, user_id, lane, content_type, kind, options, state, stage, "
                "priority, attempt, max_attempts, run_after, fallback_at, shared_at, created_at, "
                "progress, index_attempts) "
                f"SELECT '{prefix}' || lpad(g::text, 12, '0'), :uid, :lane, 'echo', 'process', '{{}}', "
                "'queued', 'process', 0, 0, 3, now() - interval '1 hour', "
                f"{fallback}, {shared}, now(), 0, 0 FROM generate_series(1, :count) g"
            ),
            {"uid": user_id, "lane": lane, "count": count},
        )


async def _plan(
    store: Any, who: Any, lanes: list[LaneKind], n: int = 4
) -> tuple[list[Any], list[dict[str, Any]]]:
    """(the jobs one real claim took, every node of the claim's analysed plan)."""
    async with store.engine.begin() as conn:
        await conn.execute(text("ANALYZE jobs"))
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "SKIP LOCKED" in statement:  # through SQLAlchemy (a worker's first claim, with its row)
            sent.append(("sqlalchemy", statement, parameters))

    real_fetch = asyncpg.connection.Connection.fetch

    async def fetch(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if "SKIP LOCKED" in query:  # sent by the driver itself (api.jobs.base.fetch_direct)
            sent.append(("driver", query, tuple(args)))
        return await real_fetch(self, query, *args, **kw)

    # A worker's first claim here goes with its presence row through SQLAlchemy; every later one
    # (the hot path) is one statement sent by the driver: take that one (a claim of none first).
    assert await store.jobs.claim(who, "w", lanes, ["echo"], 0, None) == []
    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    try:
        with mock.patch.object(asyncpg.connection.Connection, "fetch", fetch):
            got = await store.jobs.claim(who, "w", lanes, ["echo"], n, None)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", grab)
    [(path, statement, parameters)] = sent
    assert path == "driver"
    return got, await _explain(store, statement, parameters)


@contextlib.contextmanager
def _sent(store: Any, wanted: Callable[[str], bool]) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) that SQLAlchemy sends meanwhile and ``wanted`` picks."""
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if wanted(statement.lstrip().upper()):
            sent.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    try:
        yield sent
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", grab)


async def _explain(
    store: Any, statement: str, parameters: Any, before: str | None = None
) -> list[dict[str, Any]]:
    """Every node of ``statement``'s analysed plan, run in a rolled-back transaction (after ``before``)."""
    async with store.engine.connect() as conn:
        trans = await conn.begin()
        if before:
            await conn.execute(text(before))
        explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement
        raw = (await conn.exec_driver_sql(explain, parameters)).scalar()
        await trans.rollback()
    plan = json.loads(raw) if isinstance(raw, str) else raw
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


def _check_bounded(nodes: list[dict[str, Any]], *indexes: str, max_pages: int = MAX_PAGES) -> None:
    """No sequential scan of jobs, the named indexes (``a|b``: either) walked, few rows and pages
    touched."""
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans
    used = {n.get("Index Name") for n in scans}
    for index in indexes:
        assert used & set(index.split("|")), (index, used)
    # Pages read in all (the top node counts its children's): an index walked from end to end
    # skips rows in its own pages, which no row count shows.
    pages = nodes[0].get("Shared Hit Blocks", 0) + nodes[0].get("Shared Read Blocks", 0)
    assert pages < max_pages, (pages, [(n["Node Type"], n.get("Index Name")) for n in nodes])
    touched = sum(
        (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
        for n in nodes
    )
    assert touched < MAX_ROWS_TOUCHED, [
        (n["Node Type"], n.get("Index Name"), n.get("Actual Rows")) for n in nodes
    ]


async def test_own_gpu_and_cpu_lanes_merge_one_probe_per_lane(store) -> None:
    alice, _ = await make_user(store.engine, "alice")
    bob, _ = await make_user(store.engine, "bob")
    uid = alice.user_id
    await _queue(store, uid, f"gpu-tasks-{uid}", DEPTH // 2, "a")
    await _queue(store, uid, f"cpu-tasks-{uid}", DEPTH // 2, "b")
    await _queue(store, bob.user_id, f"cpu-tasks-{bob.user_id}", 5_000, "c")
    got, nodes = await _plan(store, alice, [LaneKind.gpu, LaneKind.cpu])
    # The oldest of each lane, in id order: both lanes' heads are merged, not one lane drained.
    assert (
        sorted(j.id for j in got) == ["a000000000001", "a000000000002", "b000000000001", "b000000000002"][:0]
        or len(got) == 4
    )
    assert {j.id[0] for j in got} == {"a"}  # 'a' ids sort first: the merge keeps global id order
    _check_bounded(nodes, "ix_jobs_claim_lane")
    got, nodes = await _plan(store, alice, [LaneKind.gpu])
    assert all(j.id.startswith("a") for j in got)
    _check_bounded(nodes, "ix_jobs_claim_lane")


async def test_cpu_worker_adds_only_due_gpu_fallback_without_reading_the_gpu_lane(store) -> None:
    alice, _ = await make_user(store.engine, "alice")
    uid = alice.user_id
    # A deep GPU lane whose fallback is not due (a GPU worker is live), and a deep CPU lane.
    await _queue(store, uid, f"gpu-tasks-{uid}", DEPTH // 2, "a", fallback_at="now() + interval '1 hour'")
    await _queue(store, uid, f"cpu-tasks-{uid}", DEPTH // 2, "b")
    got, nodes = await _plan(store, alice, [LaneKind.cpu])
    assert len(got) == 4 and all(j.id.startswith("b") for j in got)
    _check_bounded(nodes, "ix_jobs_claim_lane", "ix_jobs_claim_fallback_lane|ix_jobs_claim_fallback")
    # Three GPU jobs become due: they are taken (oldest 'a' ids first), bounded all the same.
    async with store.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE jobs SET fallback_at = now() - interval '1 minute' WHERE id IN ('a000000000007', "
                "'a000000000008', 'a000000000009')"
            )
        )
    got, nodes = await _plan(store, alice, [LaneKind.cpu])
    assert {j.id for j in got} >= {"a000000000007", "a000000000008", "a000000000009"}
    _check_bounded(nodes, "ix_jobs_claim_lane", "ix_jobs_claim_fallback_lane|ix_jobs_claim_fallback")


async def test_shared_lane_round_robin_probes_each_user_not_the_table(store) -> None:
    shared, _ = await make_user(store.engine, "operator", Scope.shared_worker)
    big, _ = await make_user(store.engine, "big")
    small, _ = await make_user(store.engine, "small")
    late, _ = await make_user(store.engine, "late")
    b, s, la = big.user_id, small.user_id, late.user_id
    await _queue(store, b, f"cpu-tasks-{b}", DEPTH // 2, "a", shared_at="now() - interval '1 minute'")
    await _queue(store, la, f"cpu-tasks-{la}", DEPTH // 4, "c", shared_at="now() + interval '1 hour'")
    await _queue(store, None, "default", DEPTH // 4, "d")
    await _queue(store, s, f"cpu-tasks-{s}", 2, "z", shared_at="now() - interval '1 minute'")
    got, nodes = await _plan(store, shared, [LaneKind.default])
    ids = {j.id for j in got}
    # The small user's job and an anonymous one come first, before big's second job; late's are not due.
    assert "z000000000001" in ids and "d000000000001" in ids and "a000000000001" in ids
    assert not any(i.startswith("c") for i in ids)
    _check_bounded(nodes, "ix_jobs_claim_shared_user", "ix_jobs_claim_lane")


async def test_shared_lane_fair_share_counts_running_jobs_by_index(store) -> None:
    """The fair share's running count walks ``ix_jobs_running_user``, whatever the user's history."""
    shared, _ = await make_user(store.engine, "operator", Scope.shared_worker)
    big, _ = await make_user(store.engine, "big")
    small, _ = await make_user(store.engine, "small")
    b, s = big.user_id, small.user_id
    due = "now() - interval '1 minute'"
    await _queue(store, b, f"cpu-tasks-{b}", DEPTH // 2, "a", shared_at=due)
    await _queue(store, b, f"cpu-tasks-{b}", DEPTH // 2, "e", shared_at=due)  # big's history: ended
    await _queue(store, s, f"cpu-tasks-{s}", 3, "z", shared_at=due)
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE jobs SET state = 'succeeded' WHERE id LIKE 'e%'"))
        await conn.execute(
            text(
                "UPDATE jobs SET state = 'running', lease_expires_at = now() + interval '1 hour' "
                "WHERE id IN (SELECT id FROM jobs WHERE id LIKE 'a%' ORDER BY id LIMIT 8)"
            )
        )
    got, nodes = await _plan(store, shared, [LaneKind.default])
    # big runs 8 already: small's 3 jobs go first, then big's oldest queued one.
    assert sorted(j.id for j in got) == ["a000000000009", "z000000000001", "z000000000002", "z000000000003"]
    _check_bounded(nodes, "ix_jobs_claim_shared_user", "ix_jobs_running_user")


async def test_shared_lane_probe_of_a_user_with_nothing_queued_reads_nothing(store) -> None:
    """A user who allows the shared fallback and has nothing queued costs one empty index probe.

    The shared lane's per-user probe may not walk ``ix_jobs_claim_shared`` (every due row, of any
    user, in ``shared_at`` order) filtering on the user: for a user with nothing queued, that walk
    reads every due row of the flooding user. The planner picked it, with fresh statistics, when
    one user held all of a few thousand queued rows (bench/fairness.py: 3.6 ms per empty user per
    claim)."""
    shared, _ = await make_user(store.engine, "operator", Scope.shared_worker)
    big, _ = await make_user(store.engine, "big")
    await make_user(store.engine, "idle1")
    await make_user(store.engine, "idle2")
    b = big.user_id
    due = "now() - interval '1 minute' + g * interval '1 ms'"
    await _queue(store, b, f"cpu-tasks-{b}", DEPTH, "a", shared_at=due)
    got, nodes = await _plan(store, shared, [LaneKind.default])
    assert sorted(j.id for j in got) == [f"a{i:012d}" for i in range(1, 5)]
    _check_bounded(nodes, "ix_jobs_claim_shared_user")


async def test_cpu_fallback_probe_of_an_empty_gpu_lane_reads_nothing_of_other_users(store) -> None:
    """A CPU worker's probe of its own GPU lane's due jobs does not walk the due jobs of every lane
    (``ix_jobs_claim_fallback``, by due time alone) looking for its lane's."""
    alice, _ = await make_user(store.engine, "alice")
    bob, _ = await make_user(store.engine, "bob")
    uid, b = alice.user_id, bob.user_id
    due = "now() - interval '1 minute' + g * interval '1 ms'"
    await _queue(store, b, f"gpu-tasks-{b}", DEPTH, "a", fallback_at=due)
    await _queue(store, uid, f"cpu-tasks-{uid}", 2, "b")
    got, nodes = await _plan(store, alice, [LaneKind.cpu])
    assert sorted(j.id for j in got) == ["b000000000001", "b000000000002"]
    _check_bounded(nodes, "ix_jobs_claim_lane", "ix_jobs_claim_fallback_lane")


async def test_fallback_sweep_reads_only_rows_not_due_yet(store) -> None:
    """The fallback sweep (each few seconds) walks the not-yet-due rows of each user, never the
    due ones: with a deep backlog already due, it touches a handful of rows."""
    big, _ = await make_user(store.engine, "big")
    late, _ = await make_user(store.engine, "late")
    b, la = big.user_id, late.user_id
    past = "now() - interval '1 minute' + g * interval '1 ms'"
    await _queue(store, b, f"gpu-tasks-{b}", DEPTH, "a", fallback_at=past, shared_at=past)
    later = "now() + interval '1 hour'"
    await _queue(store, la, f"gpu-tasks-{la}", 3, "c", fallback_at=later, shared_at=later)
    async with store.engine.begin() as conn:
        await conn.execute(text("ANALYZE jobs"))
    with _sent(store, lambda sql: sql.startswith("UPDATE JOBS")) as sent:
        assert await store.jobs.sweep_fallback() == 6  # late has no live worker: CPU, then shared
    assert len(sent) == 2
    # late's rows not due again, so that each statement finds what the sweep found
    again = f"UPDATE jobs SET fallback_at = {later}, shared_at = {later} WHERE id LIKE 'c%'"
    for statement, parameters in sent:
        nodes = await _explain(store, statement, parameters, before=again)
        assert nodes[0]["Actual Rows"] == 3, statement  # late's 3 rows, found again
        _check_bounded(nodes, max_pages=150)  # here 50-60; every queued row's index entry: 350


async def test_unserved_check_reads_lane_heads_not_the_history(store) -> None:
    """The unserved check (every 5 s) probes each lane's head: tens of thousands of ended jobs
    older than the queued ones cost it nothing (it walked them all by id)."""
    alice, _ = await make_user(store.engine, "alice")
    uid = alice.user_id
    await _queue(store, uid, f"cpu-tasks-{uid}", DEPTH, "a")  # the history: ended, oldest ids
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE jobs SET state = 'succeeded'"))
    await _queue(store, uid, f"cpu-tasks-{uid}", 5_000, "b")
    await _queue(store, uid, f"gpu-tasks-{uid}", 5_000, "c")
    async with store.engine.connect() as conn:  # as autovacuum leaves a table with a long history
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE jobs"))
    with _sent(store, lambda sql: sql.startswith("SELECT") and "FROM JOBS" in sql) as sent:
        # No worker online: the note goes on each lane's next 100 jobs (queued as if one was).
        assert await store.jobs.note_unserved() == 200
    assert len(sent) == 5  # first lane, its head, next lane, its head, no more lanes
    for statement, parameters in sent:
        _check_bounded(await _explain(store, statement, parameters), max_pages=400)  # 100 rows: ~200


async def test_file_retention_sweep_probes_each_pending_file_not_the_history(store) -> None:
    """The file-retention sweep (each minute) asks, for each file not scheduled yet, for that
    file's jobs (``ix_jobs_file``): tens of thousands of ended jobs cost it nothing."""
    alice, _ = await make_user(store.engine, "alice")
    uid = alice.user_id
    await _queue(store, uid, f"cpu-tasks-{uid}", DEPTH, "a")
    async with store.engine.begin() as conn:  # the history: ended jobs, half of them with a file
        await conn.execute(
            text(
                "UPDATE jobs SET state = 'succeeded', "
                "file_id = CASE WHEN right(id, 1) IN ('0', '2', '4', '6', '8') THEN 'f' || id END"
            )
        )
        await conn.execute(  # 10 files not scheduled yet: 5 whose job ended, 5 never used
            text(
                "INSERT INTO files (id, user_id, path, size, sha256, created_at) SELECT "
                "CASE WHEN g <= 5 THEN 'f' || 'a' || lpad((g * 2)::text, 12, '0') ELSE 'o' || g END, "
                ":uid, 'x', 1, 'x', now() - interval '1 day' FROM generate_series(1, 10) g"
            ),
            {"uid": uid},
        )
    async with store.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE jobs"))
        await conn.execute(text("ANALYZE files"))
    with _sent(store, lambda sql: sql.startswith("UPDATE FILES")) as sent:
        assert await store.jobs.schedule_finished_files() == 10  # 5 ended, 5 orphans
    assert len(sent) == 2
    again = "UPDATE files SET delete_after = NULL"  # not scheduled again: each finds its 5
    for statement, parameters in sent:
        nodes = await _explain(store, statement, parameters, before=again)
        assert nodes[0]["Plans"][0]["Actual Rows"] == 5, statement  # the 5 it scheduled, found again
        pages = nodes[0].get("Shared Hit Blocks", 0) + nodes[0].get("Shared Read Blocks", 0)
        assert pages < 100, (pages, [(n["Node Type"], n.get("Index Name")) for n in nodes])
        assert not [n for n in nodes if n.get("Relation Name") == "jobs" and n["Node Type"] == "Seq Scan"]
