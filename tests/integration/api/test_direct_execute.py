"""A submit's insert on PostgreSQL goes through the pooled connection's asyncpg driver
(``api.jobs.base.execute_direct``): its errors are answered as SQLAlchemy's would be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from tests.integration.api.conftest import Env, make_settings, running_env

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]

ECHO = {"url": "https://example.org/a", "content_type": "echo"}


@pytest.fixture
async def pg_env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    async with running_env(
        make_settings(tmp_path, database_url=database_url), raise_app_exceptions=False
    ) as env:
        yield env


def _fail_inserts_with(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> list[Any]:
    """The next job insert sent by asyncpg raises ``exc`` (once); returns the connections that
    were asked to run one, in order."""
    seen: list[Any] = []
    real = asyncpg.connection.Connection.execute

    async def execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if query.startswith(("WITH ins AS (INSERT INTO jobs", "INSERT INTO jobs")):
            seen.append(self)
            if len(seen) == 1:
                raise exc
        return await real(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute)
    return seen


def _record_sent(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """The SQL texts asyncpg is asked to run through ``Connection.<method>`` from now on."""
    sent: list[str] = []
    real = getattr(asyncpg.connection.Connection, method)

    async def recording(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        sent.append(query)
        return await real(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, method, recording)
    return sent


async def _submit(env: Env) -> Any:
    return await env.client.post("/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)


async def _jobs(env: Env) -> int:
    async with env.state.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one())


async def test_a_lost_connection_is_503_and_leaves_the_pool(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fail_inserts_with(monkeypatch, asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    resp = await _submit(pg_env)
    assert resp.status_code == 503 and resp.json()["code"] == "database_unavailable", resp.text
    assert int(resp.headers["retry-after"]) >= 1
    assert seen[0].is_closed()  # invalidated: the pool closed it and opens a fresh one instead
    for _ in range(12):  # more submits than the pool holds connections: the lost one never returns
        assert (await _submit(pg_env)).status_code == 202
    assert len(seen) == 13 and seen[0] not in seen[1:] and await _jobs(pg_env) == 12


async def test_a_value_the_database_refuses_is_422(pg_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_inserts_with(monkeypatch, asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"))
    resp = await _submit(pg_env)
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_data", resp.text
    assert await _jobs(pg_env) == 0


async def test_another_database_error_is_500_not_a_crash(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_inserts_with(monkeypatch, asyncpg.exceptions.UniqueViolationError("duplicate key"))
    resp = await _submit(pg_env)
    assert resp.status_code == 500 and resp.json()["code"] == "internal_error", resp.text
    assert (await _submit(pg_env)).status_code == 202 and await _jobs(pg_env) == 1


async def test_a_claim_sent_by_the_driver_hands_out_the_jobs_as_sqlalchemy_did(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known worker's claim is one statement sent by asyncpg (its first claim here goes through
    SQLAlchemy with its presence row): the same job fields either way, JSON options decoded."""
    from api.keystore import Scope
    from tests.factories import claim, make_user, submit

    state = pg_env.state
    alice, _ = await make_user(state.engine, "alice2", Scope.client)
    worker, _ = await make_user(state.engine, "alice2", Scope.worker)  # her own worker
    options = {"nested": [1, {"b": "ü"}], "fast": True}
    first = await submit(state, alice, options=options, priority=5)
    second = await submit(state, alice, options=options, priority=5)
    sent = _record_sent(monkeypatch, "fetch")
    [by_sqlalchemy] = await claim(state, worker, "w1")  # its first claim: presence, SQLAlchemy
    assert not [q for q in sent if "SKIP LOCKED" in q]
    [by_driver] = await claim(state, worker, "w1")
    assert len([q for q in sent if "SKIP LOCKED" in q]) == 1
    assert {by_sqlalchemy.id, by_driver.id} == {first, second}
    for job in (by_sqlalchemy, by_driver):
        assert job.options == options and job.priority == 5 and job.attempt == 1
        assert job.content_type == "echo" and job.user_id == alice.user_id and job.lease_token
    assert type(by_driver.lease_expires_at) is type(by_sqlalchemy.lease_expires_at)
    assert (by_driver.lease_expires_at.tzinfo is None) == (by_sqlalchemy.lease_expires_at.tzinfo is None)


async def test_one_job_and_a_batch_store_the_same_row(pg_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """One job goes in by a one-row VALUES statement, a batch by arrays (``unnest``): every column
    the same either way, JSON included, NULLs where the job has no value, and both NOTIFY."""
    from api.keystore import Scope
    from tests.factories import make_user, rich_and_bare_jobs

    state = pg_env.state
    alice, _ = await make_user(state.engine, "alice3", Scope.client)
    sent = _record_sent(monkeypatch, "execute")
    woken: list[Any] = []
    monkeypatch.setattr(state.notifier, "wake", woken.append)
    job, bare = rich_and_bare_jobs()
    [one] = await state.jobs.enqueue_many(alice, [job])
    [bare_one] = await state.jobs.enqueue_many(alice, [bare])
    batch = await state.jobs.enqueue_many(alice, [job, bare])
    assert [q for q in sent if "VALUES" in q and "unnest" not in q] and [q for q in sent if "unnest" in q]
    assert len(woken) == 3  # each insert announced its jobs
    async with state.engine.connect() as conn:
        rows = {r.id: r._asdict() for r in await conn.execute(text("SELECT * FROM jobs"))}
    skip = {"id", "created_at", "updated_at", "run_after", "fallback_at", "shared_at"}
    for single, batched in ((one, batch[0]), (bare_one, batch[1])):
        a, b = rows[single], rows[batched]
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
        for k in ("run_after", "fallback_at", "shared_at"):  # same offsets from the creation time
            da = None if a[k] is None else a[k] - a["created_at"]
            db = None if b[k] is None else b[k] - b["created_at"]
            assert da == db, k
    assert rows[one]["options"] == job.options and rows[one]["index_options"] == {"chunk_size": 500}
    assert rows[bare_one]["index_options"] is None and rows[bare_one]["webhook_url"] is None
    assert rows[one]["state"] == "queued" and rows[one]["attempt"] == 0 and rows[one]["progress"] == 0.0


# --- the DirectPool (api/db.py): connections kept between the hot statements -----------------------


def _connections_used(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The asyncpg connection of each job insert from now on, in order."""
    used: list[Any] = []
    real = asyncpg.connection.Connection.execute

    async def execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if query.startswith(("WITH ins AS (INSERT INTO jobs", "INSERT INTO jobs")):
            used.append(self)
        return await real(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute)
    return used


async def test_submits_reuse_one_kept_connection_and_a_refused_value_keeps_it(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break caught: the connection given back to the engine's pool after each use (no reuse), or
    dropped after a statement the database refused."""
    from api.db import direct_pool

    used = _connections_used(monkeypatch)
    for _ in range(3):
        assert (await _submit(pg_env)).status_code == 202
    assert len(used) == 3 and used[0] is used[1] is used[2]
    pool = pg_env.state.engine.sync_engine.pool
    held = pool.checkedout()
    assert held >= 1 and len(direct_pool(pg_env.state.engine)._idle) >= 1
    _fail_inserts_with(monkeypatch, asyncpg.exceptions.CharacterNotInRepertoireError("bad byte"))
    assert (await _submit(pg_env)).status_code == 422
    assert (await _submit(pg_env)).status_code == 202
    assert used[-1] is used[0] and not used[0].is_closed() and pool.checkedout() == held


async def test_a_statement_cancelled_midway_closes_its_connection(pg_env: Env) -> None:
    """A cancelled statement may leave its connection midway through a reply: it is closed, never
    handed to the next statement. Break caught: every connection that raised nothing of the
    database's own put back."""
    from api.db import direct_pool
    from api.jobs.base import execute_direct

    engine = pg_env.state.engine
    direct = direct_pool(engine)
    async with direct.connection() as warm:  # one idle connection to start from
        pass
    slow = asyncio.create_task(execute_direct(engine, text("SELECT pg_sleep(5)"), {}))
    await asyncio.sleep(0.3)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert warm.is_closed() and all(f.driver_connection is not warm for _, f in direct._idle)
    async with direct.connection() as fresh:
        assert fresh is not warm and await fresh.fetchval("SELECT 1") == 1


async def test_kept_connections_are_bounded_recycled_and_given_back(pg_env: Env) -> None:
    """At most ``keep`` wait idle; one held past ``recycle_s`` goes back to the engine's pool; close
    gives every idle one back. Breaks caught: no bound, no recycling, nothing given back (the
    engine's dispose would leave them open)."""
    from api.db import DirectPool

    engine = pg_env.state.engine
    pool = engine.sync_engine.pool
    before = pool.checkedout()
    direct = DirectPool(engine, keep=2)

    async def use() -> None:
        async with direct.connection() as conn:
            await conn.fetchval("SELECT pg_sleep(0.05)")

    await asyncio.gather(*(use() for _ in range(5)))
    assert len(direct._idle) == 2 and pool.checkedout() == before + 2
    direct.recycle_s = 0.0
    await use()
    assert len(direct._idle) == 1 and pool.checkedout() == before + 1  # the one used went back
    await direct.close()
    assert direct._idle == [] and pool.checkedout() == before
    await use()  # closed: used once more, then given back at once
    assert pool.checkedout() == before


async def test_every_statement_is_planned_for_its_values(pg_env: Env) -> None:
    """Prepared statements kept on a connection would go to PostgreSQL's generic plan after five
    runs (api/db.py, _PG_SESSION). Break caught: the session setting dropped."""
    from api.db import direct_pool

    async with direct_pool(pg_env.state.engine).connection() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    async with pg_env.state.engine.connect() as conn:
        assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one() == "force_custom_plan"


async def test_dispose_closes_the_kept_connections(database_url: str) -> None:
    """Break caught: ``api.db.dispose`` leaving the DirectPool's connections open (checked out, so
    the engine's own dispose does not close them)."""
    from api.db import direct_pool, dispose, make_engine

    engine = make_engine(database_url)
    async with direct_pool(engine).connection() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await dispose(engine)
    assert conn.is_closed()
