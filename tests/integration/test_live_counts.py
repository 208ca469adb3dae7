"""What /metrics reads from the job store: live jobs and online workers, never the ended history.

On PostgreSQL, with 50,000 ended jobs beside a handful of live ones, every statement of
``count_live_jobs`` is run again under ``EXPLAIN (ANALYZE, FORMAT JSON)``: no sequential scan of
``jobs`` and a few rows touched, so a scrape's cost follows the queue, not the history.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event, text, update

from api.jobs.tables import JOBS as J
from protocol.states import LaneKind
from tests.factories import claim, make_user, submit


async def test_live_counts_hold_queued_and_running_jobs_only(store: Any) -> None:
    alice, _ = await make_user(store.engine, "alice")
    ids = [await submit(store, alice) for _ in range(4)]
    await submit(store, alice, "audio", LaneKind.gpu)
    (running,) = await claim(store, alice, "w1")
    async with store.engine.begin() as conn:  # two of them ended long ago
        await conn.execute(update(J).where(J.c.id == ids[1]).values(state="succeeded"))
        await conn.execute(update(J).where(J.c.id == ids[2]).values(state="dead"))
    lanes = {lane.lane: lane for lane in await store.jobs.count_live_jobs()}
    cpu, gpu = f"cpu-tasks-{alice.user_id}", f"gpu-tasks-{alice.user_id}"
    assert set(lanes) == {cpu, gpu}
    assert (lanes[cpu].queued, lanes[cpu].running) == (1, 1)
    assert (lanes[gpu].queued, lanes[gpu].running) == (1, 0)
    assert lanes[cpu].oldest_queued_run_after is not None and running.id == ids[0]
    online = await store.jobs.count_online_workers()
    assert (online.gpu, online.cpu, online.total) == (0, 1, 1)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node and every node under it."""
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_live_counts_walk_partial_indexes_not_the_history(store: Any) -> None:
    alice, _ = await make_user(store.engine, "alice")
    for _ in range(3):
        await submit(store, alice)
    await claim(store, alice, "w1")
    async with store.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO jobs (id, user_id, lane, content_type, kind, options, state, stage, "
                "priority, attempt, max_attempts, run_after, created_at, finished_at, progress, "
                "index_attempts) "
                "SELECT md5(g::text), :uid, :lane, 'echo', 'process', '{}', "
                "CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'succeeded' END, 'done', 0, 1, 3, now(), now(), "
                "now(), 1, 0 FROM generate_series(1, 50000) g"
            ),
            {"uid": alice.user_id, "lane": f"cpu-tasks-{alice.user_id}"},
        )
        await conn.execute(text("ANALYZE jobs"))
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM jobs" in statement:
            sent.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    try:
        (lane,) = await store.jobs.count_live_jobs()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", grab)
    assert (lane.queued, lane.running) == (2, 1)
    assert len(sent) == 2, sent
    for statement, parameters in sent:
        async with store.engine.connect() as conn:
            raw = (
                await conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            ).scalar()
        plan = json.loads(raw) if isinstance(raw, str) else raw
        nodes = _nodes(plan[0]["Plan"])
        scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
        assert scans and not [n for n in scans if n["Node Type"] == "Seq Scan"], (statement, scans)
        touched = sum(
            (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
            for n in nodes
        )
        assert touched < 100, (statement, [(n["Node Type"], n.get("Index Name")) for n in nodes])
