"""On SQLite a batch of completions runs its fenced UPDATEs in one trip to the database's thread
(``api.jobs.base.run_many_direct``): the rows it writes and the answers it gives are SQLAlchemy's."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from api.errors import StaleLease
from api.ids import utcnow
from api.jobs import Lease
from api.jobs.base import fence_params, run_many_direct
from api.jobs.leases import _COMPLETE
from api.jobs.tables import JOBS as J
from tests.factories import claim, make_user, rich_and_bare_jobs, sqlite_trips, submit

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _leases(store: Any, n: int) -> list[Lease]:
    who, _ = await make_user(store.engine, "alice")
    for _ in range(n):
        await submit(store, who)
    return [Lease(j.id, j.lease_token, who.key_id) for j in await claim(store, who, n=n)]


async def _row(store: Any, job_id: str) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(J).where(J.c.id == job_id))).mappings().one()
    submitted = ("id", "lease_token", "claim_id", "created_at", "run_after", "shared_at", "fallback_at")
    return {k: v for k, v in row.items() if k not in submitted}


async def test_the_direct_batch_writes_and_returns_what_sqlalchemy_does(store: Any) -> None:
    mine, theirs = await _leases(store, 2)
    result = {"markdown": "# é\n", "metadata": {"pages": 2, "nested": {"x": [1, None]}}}
    params = {"result": result, "now": utcnow()}
    async with store.engine.begin() as conn:
        via_sa = (await conn.execute(_COMPLETE, {**fence_params(theirs), **params})).one()
        (direct,) = (await run_many_direct(conn, _COMPLETE, [{**fence_params(mine), **params}]))[0]
    assert {k: getattr(direct, k) for k in via_sa._fields} == via_sa._asdict()
    assert await _row(store, mine.job_id) == await _row(store, theirs.job_id)
    assert (await _row(store, mine.job_id))["result"] == result


async def test_a_batch_is_one_trip_and_each_result_gets_its_own_answer(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = await _leases(store, 6)
    stale = Lease(leases[5].job_id, "not-the-token", leases[5].key_id)
    trips = sqlite_trips(monkeypatch)
    out = await store.jobs.complete_many([(lease, f"# {i}", {}) for i, lease in enumerate(leases[:5])])
    assert [e.job_id for e in out] == [lease.job_id for lease in leases[:5]]
    assert trips == ["_run_many", "commit"]  # five fenced UPDATEs (and BEGIN) in one trip
    again = await store.jobs.complete_many([(leases[0], "# 0", {}), (stale, "# x", {})])
    assert again[0].job_id == leases[0].job_id  # a repeated completion: the same answer
    assert isinstance(again[1], StaleLease)
    async with store.engine.connect() as conn:
        done = (await conn.execute(select(J.c.state).where(J.c.id.in_([x.job_id for x in leases])))).all()
    assert sorted(s for (s,) in done) == ["running"] + ["succeeded"] * 5


async def test_sqlite_errors_become_sqlalchemy_errors(store: Any) -> None:
    table = Table("direct_t", MetaData(), Column("id", Integer, primary_key=True), Column("v", String))
    async with store.engine.begin() as conn:
        await conn.run_sync(table.create)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with store.engine.begin() as conn:
            await run_many_direct(conn, table.insert(), [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}])
    async with store.engine.connect() as conn:  # the batch's transaction was rolled back whole
        assert (await conn.execute(select(table))).all() == []


async def test_a_submit_stores_the_row_sqlalchemy_would(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The insert of a job (one row, or a batch in one trip) writes every column as SQLAlchemy's own
    ``INSERT`` of the same dict does: JSON, NULLs, datetimes."""
    from api.jobs import submit as submit_module

    who, _ = await make_user(store.engine, "alice")
    job, bare = rich_and_bare_jobs()
    direct = await store.jobs.enqueue_many(who, [job, bare])
    trips = sqlite_trips(monkeypatch)
    await store.jobs.enqueue_many(who, [bare, bare, bare])
    assert trips == ["_run_many", "commit"]  # BEGIN and three inserts in one trip
    rows: list[dict[str, Any]] = []

    async def through_sqlalchemy(conn: Any, stmt: Any, param_sets: list[dict[str, Any]]) -> list[list[Any]]:
        rows.extend({k.removeprefix("v_"): v for k, v in p.items()} for p in param_sets)
        await conn.execute(J.insert(), rows)
        return [[] for _ in param_sets]

    monkeypatch.setattr(submit_module, "run_many_direct", through_sqlalchemy)
    via_sa = await store.jobs.enqueue_many(who, [job, bare])
    for mine, theirs in zip(direct, via_sa, strict=True):
        a, b = await _row(store, mine), await _row(store, theirs)
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k != "updated_at"} == {
            k: v for k, v in b.items() if k != "updated_at"
        }
        assert type(a["updated_at"]) is type(b["updated_at"])
    stored = await _row(store, direct[0])
    assert stored["options"] == job.options and stored["index_options"] == {"chunk_size": 500}
    assert stored["webhook_url"] == "https://hooks.example.org/x" and stored["error"] is None
