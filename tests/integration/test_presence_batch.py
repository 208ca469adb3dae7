"""Worker presence: written with a worker's first claim, then refreshed in batches (issue
[throughput]: 1,000 idle workers re-polling in the same second were 1,000 write transactions, and a
submission timed by curl waited up to 1.2 s behind them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from api.ids import utcnow
from api.jobs import base
from api.jobs.tables import WORKERS as W
from api.keystore import Scope
from api.maintenance import PresenceWriter, upkeep_services
from protocol.states import LaneKind
from tests.factories import claim, make_user
from tests.integration.api.conftest import make_settings, running_env


class _Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(base, "time", c)
    return c


@pytest.fixture
def statements(store: Any) -> Iterator[list[tuple[str, bool]]]:
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine.sync_engine, "before_cursor_execute", record)


def _worker_writes(seen: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    return [(s, many) for s, many in seen if "workers" in s.split("WHERE")[0] and "SELECT" not in s[:10]]


async def _seen_at(store: Any) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        return {
            r.worker_id: r.last_seen_at for r in await conn.execute(select(W.c.worker_id, W.c.last_seen_at))
        }


async def test_refreshes_wait_for_one_batched_write(store, clock, statements) -> None:
    who, _ = await make_user(store.engine, "alice", Scope.worker)
    for i in range(20):  # first claims: each worker's row is written with its claim
        await claim(store, who, f"w{i}")
    first = await _seen_at(store)
    assert len(first) == 20 and len(_worker_writes(statements)) == 20
    statements.clear()

    clock.now += base.PRESENCE_REFRESH_S + 1  # every row is due for a refresh
    for i in range(20):
        await claim(store, who, f"w{i}")
    assert _worker_writes(statements) == []  # no claim wrote presence
    assert await _seen_at(store) == first

    assert await store.jobs.flush_presence() == 20
    writes = _worker_writes(statements)
    assert len(writes) == 1 and writes[0][1]  # one statement, all 20 rows (executemany)
    after = await _seen_at(store)
    assert all(after[w] > first[w] for w in first)
    assert await store.jobs.flush_presence() == 0  # nothing twice


async def test_a_repoll_that_waits_without_a_query_still_renews_presence(store, clock, statements) -> None:
    """A known worker's long-poll may wait without its claim query (api.waiters): its presence
    renewal is queued all the same, and an unknown worker or shape must run the claim."""
    who, _ = await make_user(store.engine, "alice", Scope.worker)
    lanes, types = [LaneKind.cpu], ["echo"]  # as tests.factories.claim asks
    assert not store.jobs.presence_kept(who, "w1", lanes, types)  # never seen: its claim writes the row
    await claim(store, who, "w1")
    first = await _seen_at(store)
    statements.clear()
    assert store.jobs.presence_kept(who, "w1", lanes, types)
    assert store.jobs.presence_kept(who, "w1", lanes, types, name="renamed") is False
    assert store.jobs.presence_kept(who, "w1", [LaneKind.gpu, LaneKind.cpu], types) is False
    assert await store.jobs.flush_presence() == 0  # fresh: nothing due
    clock.now += base.PRESENCE_REFRESH_S + 1
    assert store.jobs.presence_kept(who, "w1", lanes, types)
    assert _worker_writes(statements) == []
    assert await store.jobs.flush_presence() == 1
    assert (await _seen_at(store))["w1"] > first["w1"]


async def test_a_new_shape_is_written_with_the_claim(store, clock, statements) -> None:
    who, _ = await make_user(store.engine, "alice", Scope.worker)
    await claim(store, who, "w1", lanes=(LaneKind.cpu,))
    async with store.engine.connect() as conn:
        first = (await conn.execute(select(W.c.first_seen_at, W.c.last_seen_at))).one()
    statements.clear()
    await asyncio.sleep(0.01)
    await claim(store, who, "w1", lanes=(LaneKind.cpu, LaneKind.gpu))  # now serves GPU too: at once
    assert len(_worker_writes(statements)) == 1
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(W.c.serves_gpu, W.c.first_seen_at, W.c.last_seen_at))).one()
    assert row.serves_gpu is True
    assert row.first_seen_at == first.first_seen_at and row.last_seen_at > first.last_seen_at
    statements.clear()
    await claim(store, who, "w1", lanes=(LaneKind.cpu, LaneKind.gpu))  # fresh: nothing to write
    assert _worker_writes(statements) == [] and await store.jobs.flush_presence() == 0


async def test_a_failed_flush_keeps_its_renewals(store, clock, monkeypatch) -> None:
    who, _ = await make_user(store.engine, "alice", Scope.worker)
    await claim(store, who, "w1")
    async with store.engine.begin() as conn:
        await conn.execute(update(W).values(last_seen_at=utcnow().replace(year=2000)))
    clock.now += base.PRESENCE_REFRESH_S + 1
    await claim(store, who, "w1")

    class Down:
        def begin(self) -> Any:
            raise ConnectionError("database down")

    monkeypatch.setattr(store.jobs, "engine", Down())
    with pytest.raises(ConnectionError):
        await store.jobs.flush_presence()
    monkeypatch.setattr(store.jobs, "engine", store.engine)
    assert await store.jobs.flush_presence() == 1
    assert (await _seen_at(store))["w1"].year > 2000


async def test_the_server_runs_the_presence_writer(tmp_path: Path, database_url: str, clock) -> None:
    assert any(isinstance(s, PresenceWriter) for s in upkeep_services(None, make_settings(tmp_path)))  # type: ignore[arg-type]
    settings = make_settings(tmp_path, database_url=database_url, claim_wait_max_s=0)
    body = {"worker_id": "w1", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 0}
    async with running_env(settings) as env:
        assert (await env.client.post("/worker/claim", headers=env.worker, json=body)).status_code == 204
        async with env.state.engine.begin() as conn:
            await conn.execute(update(W).values(last_seen_at=utcnow().replace(year=2000)))
        clock.now += base.PRESENCE_REFRESH_S + 1
        assert (await env.client.post("/worker/claim", headers=env.worker, json=body)).status_code == 204
        for _ in range(50):  # written by the server's own loop within PRESENCE_FLUSH_S
            async with env.state.engine.connect() as conn:
                seen = (await conn.execute(select(W.c.last_seen_at))).scalar_one()
            if seen.year > 2000:
                break
            await asyncio.sleep(0.1)
        assert seen.year > 2000
