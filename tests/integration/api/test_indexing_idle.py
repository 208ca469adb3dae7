"""The indexing loop costs no query while nothing is in indexing, and still finds every job that
needs it: a result stored through this process at once, a retry after an outage at its time, a
result that no event of this process announced (stored through another process) within
``index_idle_s`` (api/indexing/stage.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from api.indexing.errors import VectorStoreUnavailable
from api.jobs import Lease
from tests.integration.api.conftest import Env, claim, complete, make_settings, record_calls, running_env


def _fake_indexer(env: Env, outages: int = 0) -> list[float]:
    """The indexer answers at once (no model); the first ``outages`` calls find the vector store
    down. Returns the times of its calls."""
    calls: list[float] = []

    async def index_document(**kw: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) <= outages:
            raise VectorStoreUnavailable("qdrant at http://qdrant:6333 refused the connection")
        return SimpleNamespace(
            document_id=kw["document_id"],
            chunk_count=1,
            removed_points=0,
            embedding_model="m",
            dimension=3,
            seconds=0,
        )

    env.app.state.indexer.index_document = index_document
    return calls


async def _ingest(env: Env) -> tuple[str, dict[str, Any]]:
    r = await env.client.post(
        "/api/v1/ingest/url", headers=env.alice, json={"url": "https://example.org/a", "content_type": "web"}
    )
    assert r.status_code == 202, r.text
    (job,) = await claim(env, ["web"])
    return str(r.json()["task_id"]), job


async def _status(env: Env, task: str) -> dict[str, Any]:
    return dict((await env.client.get(f"/api/v1/status/{task}", headers=env.alice)).json())


async def _until_succeeded(env: Env, task: str, within_s: float) -> float:
    t0 = time.monotonic()
    while (await _status(env, task))["status"] != "succeeded":
        assert time.monotonic() - t0 < within_s, await _status(env, task)
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_an_idle_indexer_runs_no_query_and_a_result_here_wakes_it_at_once(
    database_url: str, tmp_path
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, index_interval_s=0.05, index_idle_s=30)
    async with running_env(settings) as env:
        _fake_indexer(env)
        await asyncio.sleep(1.0)  # its first look, at start (a busy machine may take a while)
        looks = record_calls(env.state.jobs, "claim_index_work")
        await asyncio.sleep(1.0)
        assert looks == [], "nothing is in indexing: the loop sleeps (it looked 2 times a second)"
        task, job = await _ingest(env)
        await complete(env, job, "# a")
        assert await _until_succeeded(env, task, 5) < 2.0  # the completion's event, not the idle period


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_retry_after_an_outage_runs_when_due_not_after_the_idle_period(env_idle: Env) -> None:
    env = env_idle
    calls = _fake_indexer(env, outages=1)
    task, job = await _ingest(env)
    await complete(env, job, "# a")
    await _until_succeeded(env, task, 5)  # index_retry_base_s is 0.5 here, index_idle_s 30
    assert len(calls) == 2 and 0.2 < calls[1] - calls[0] < 2.0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_result_no_event_announced_is_indexed_within_the_idle_period(
    database_url: str, tmp_path
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, index_idle_s=0.5)
    async with running_env(settings) as env:
        _fake_indexer(env)
        task, job = await _ingest(env)
        await asyncio.sleep(0.3)
        # Stored as another server process would: through the store, with no event in this one.
        key_id = (await env.state.keys.authenticate(env.worker["Authorization"].split()[1])).key_id
        [stored] = await env.state.jobs.complete_many(
            [(Lease(job["job_id"], job["lease_token"], key_id), "# a", {})]
        )
        assert stored.state.value == "running"  # in its indexing stage
        assert await _until_succeeded(env, task, 5) < 2.0


@pytest.fixture
async def env_idle(database_url: str, tmp_path) -> Any:
    settings = make_settings(
        tmp_path, database_url=database_url, index_idle_s=30, index_interval_s=0.05, index_retry_base_s=0.5
    )
    async with running_env(settings) as env:
        yield env
