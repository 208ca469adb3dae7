"""A job queued while a claim waits idle for its lane is leased to that claim by its own insert
(``MORAG_CLAIM_HANDOFF``): the lease is the one a claim writes, the claim stays idempotent and
fenced, and no job is lost when the claim leaves before or after the hand-off or the insert fails."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.jobs.tables import JOBS as J
from api.keystore import Scope
from tests.factories import make_user, submit
from tests.integration.api.conftest import Env, make_settings, running_env

_COLUMNS = ("state", "attempt", "lease_token", "claim_id", "worker_id", "worker_key_id", "progress_message")


def _body(claim_id: str, wait_s: float = 20, **kw: Any) -> dict[str, Any]:
    return {
        "worker_id": "w1",
        "lanes": ["gpu", "cpu"],
        "content_types": ["echo"],
        "wait_s": wait_s,
        "max_jobs": 4,
        "claim_id": claim_id,
        **kw,
    }


async def _poll(env: Env, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await env.client.post("/worker/claim", headers=env.worker, json=body)
    if resp.status_code == 204:
        return []
    assert resp.status_code == 200, resp.text
    return list(resp.json()["jobs"])


async def _row(env: Env, job_id: str) -> dict[str, Any]:
    async with env.state.engine.connect() as conn:
        row = (await conn.execute(select(J).where(J.c.id == job_id))).mappings().one()
    return dict(row)


async def _waiting(env: Env, n: int = 1) -> None:
    """Until ``n`` claims wait idle (their first look found nothing)."""
    waiters = env.state.notifier.waiters
    end = time.monotonic() + 10
    while not (len(waiters) == n and all(w.open() for w in waiters._waiters.values())):
        assert time.monotonic() < end, "the claims never started waiting"
        await asyncio.sleep(0.01)


async def _until_queued(env: Env, job_id: str) -> dict[str, Any]:
    end = time.monotonic() + 10
    while (row := await _row(env, job_id))["state"] != "queued":
        assert time.monotonic() < end, f"the job stayed {row['state']}"
        await asyncio.sleep(0.02)
    return row


async def test_a_handed_job_is_leased_as_a_claim_leases_it(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        poll = asyncio.create_task(_poll(env, _body("c1")))
        await _waiting(env)
        t0 = time.time()
        handed_id = await submit(env.state, alice)
        [handed] = await asyncio.wait_for(poll, 5)
        assert handed["job_id"] == handed_id
        assert env.state.notifier.waiters.handoffs == 1
        # The same job queued with nobody waiting, leased by the claim query.
        claimed_id = await submit(env.state, alice)
        [claimed] = await _poll(env, _body("c2", wait_s=0))
        assert claimed["job_id"] == claimed_id and env.state.notifier.waiters.handoffs == 1
        by_insert, by_claim = await _row(env, handed_id), await _row(env, claimed_id)
        assert {c: by_insert[c] for c in _COLUMNS} == {
            **{c: by_claim[c] for c in _COLUMNS},
            "lease_token": handed["lease_token"],
            "claim_id": by_claim["claim_id"].replace(":c2", ":c1"),
        }
        assert by_insert["state"] == "running" and by_insert["attempt"] == handed["attempt"] == 1
        assert by_insert["started_at"] is not None
        expires = by_insert["lease_expires_at"].timestamp()
        assert t0 + settings.lease_s - 1 < expires < time.time() + settings.lease_s + 1
        # Idempotent: the re-sent claim gets the same job and lease back.
        again = await _poll(env, _body("c1", wait_s=0, retry=True))
        assert [(j["job_id"], j["lease_token"]) for j in again] == [(handed_id, handed["lease_token"])]
        # Fenced: only its lease completes it.
        stale = {"job_id": handed_id, "lease_token": "not-the-lease", "markdown": "x"}
        resp = await env.client.post("/worker/complete", headers=env.worker, json=stale)
        assert resp.status_code == 409 and resp.json()["code"] == "stale_lease"
        done = {"job_id": handed_id, "lease_token": handed["lease_token"], "markdown": "# done"}
        resp = await env.client.post("/worker/complete", headers=env.worker, json=done)
        assert resp.status_code == 200, resp.text
        assert (await _row(env, handed_id))["state"] == "succeeded"


async def test_off_the_new_job_is_queued_and_claimed_by_a_query(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0, claim_handoff=False)
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        poll = asyncio.create_task(_poll(env, _body("c1")))
        await _waiting(env)
        job = await submit(env.state, alice)
        assert [j["job_id"] for j in await asyncio.wait_for(poll, 5)] == [job]
        assert env.state.notifier.waiters.handoffs == 0


@pytest.mark.parametrize(
    "step", ["reserve", "hand"], ids=["left-before-the-commit", "cancelled-after-the-hand-off"]
)
async def test_a_claim_that_leaves_around_the_hand_off_leaves_the_job_queued(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The worker's connection closes while the insert is on its way (``reserve``: the submit gives
    the lease back), or the claim is cancelled after the hand-off before it could answer (``hand``:
    the claim gives it back); either way the job is queued again at once, not left running until
    its lease expires, and the next claim takes it as a first attempt."""
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        waiters = env.state.notifier.waiters
        poll = asyncio.create_task(_poll(env, _body("c1")))
        await _waiting(env)
        real = getattr(waiters, step)

        def then_leave(*a: Any) -> Any:
            out = real(*a)
            assert out
            poll.cancel()
            return out

        monkeypatch.setattr(waiters, step, then_leave)
        job = await submit(env.state, alice)
        await asyncio.gather(poll, return_exceptions=True)
        row = await _until_queued(env, job)
        assert (row["attempt"], row["lease_token"], row["claim_id"]) == (0, None, None)
        assert waiters.handoffs == (0 if step == "reserve" else 1)
        monkeypatch.setattr(waiters, step, real)
        got = await _poll(env, _body("c2", wait_s=0))  # queued again: the next claim takes it
        assert [(j["job_id"], j["attempt"]) for j in got] == [(job, 1)]


async def test_a_failed_insert_leaves_the_claim_waiting_for_the_next_job(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.jobs.submit as submit_module

    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        poll = asyncio.create_task(_poll(env, _body("c1")))
        await _waiting(env)

        async def broken(*a: Any, **kw: Any) -> Any:
            raise RuntimeError("the database went away")

        with monkeypatch.context() as m:
            m.setattr(submit_module, "execute_direct", broken)
            m.setattr(submit_module, "run_many_direct", broken)
            with pytest.raises(RuntimeError):
                await submit(env.state, alice)
        await asyncio.sleep(0.1)
        assert not poll.done()
        await _waiting(env)  # released: open for the next job
        job = await submit(env.state, alice)
        assert [j["job_id"] for j in await asyncio.wait_for(poll, 5)] == [job]
        assert env.state.notifier.waiters.handoffs == 1


async def test_a_batch_hands_one_job_per_waiting_claim_and_queues_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    from api.jobs.records import NewJob
    from protocol.states import LaneKind

    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        polls = [asyncio.create_task(_poll(env, {**_body(f"c{i}"), "worker_id": f"w{i}"})) for i in range(2)]
        await _waiting(env, 2)
        jobs = [NewJob(content_type="echo", lane_kind=LaneKind.cpu, options={}) for _ in range(3)]
        ids = await env.state.jobs.enqueue_many(alice, jobs)
        got = [j["job_id"] for p in polls for j in await asyncio.wait_for(p, 5)]
        assert sorted(got) == sorted(ids[:2])
        assert env.state.notifier.waiters.handoffs == 2
        assert (await _row(env, ids[2]))["state"] == "queued"
        [last] = await _poll(env, _body("c9", wait_s=0))
        assert last["job_id"] == ids[2]


async def test_a_failed_commit_releases_the_reserved_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite commits the insert when its transaction ends (PostgreSQL commits it in the statement,
    covered above): a commit that fails must release the claim too, or it would wait for ever."""
    from api.db import _one_hop_class

    settings = make_settings(
        tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db", claim_recheck_s=30.0
    )
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        poll = asyncio.create_task(_poll(env, _body("c1", wait_s=1)))
        await _waiting(env)
        conn_class = _one_hop_class()

        async def broken(self: Any) -> None:
            raise RuntimeError("disk I/O error")

        with monkeypatch.context() as m:
            m.setattr(conn_class, "commit", broken)
            with pytest.raises(Exception, match="disk I/O error"):
                await submit(env.state, alice)
        assert await asyncio.wait_for(poll, 5) == []  # waited on to its deadline, then a 204
        assert env.state.notifier.waiters.handoffs == 0
