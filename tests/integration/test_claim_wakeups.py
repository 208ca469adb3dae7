"""Long-polling claims over HTTP on both backends: a new job wakes one waiter, none is lost, and
jobs that become claimable by time are still found (the one shared re-check)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from api import keystore
from api.app import create_app
from api.keystore import Scope
from protocol.states import LaneKind
from tests.factories import make_user, submit
from tests.integration.api.conftest import Env, make_settings, record_calls, running_env, until


def _body(
    worker_id: str, wait_s: float, lanes: list[str] | None = None, ctypes: list[str] | None = None
) -> Any:
    return {
        "worker_id": worker_id,
        "lanes": lanes or ["gpu", "cpu"],
        "content_types": ctypes or ["echo"],
        "wait_s": wait_s,
        "max_jobs": 1,
    }


async def _poll(env: Env, body: Any, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    resp = await env.client.post("/worker/claim", headers=headers or env.worker, json=body)
    if resp.status_code == 204:
        return []
    assert resp.status_code == 200, resp.text
    return list(resp.json()["jobs"])


def _count_claims(env: Env) -> list[float]:
    """Record the time of every claim query the store runs."""
    return record_calls(env.state.jobs, "claim")


@pytest.mark.parametrize("handoff", [True, False], ids=["handoff", "wake"])
async def test_one_new_job_costs_one_claim_query_not_one_per_waiter(
    database_url: str, tmp_path: Path, handoff: bool
) -> None:
    """With the hand-off the job is leased to one waiter by its insert (no claim query at all);
    without it, it wakes one waiter, whose query takes it."""
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0, claim_handoff=handoff)
    async with running_env(settings) as env:
        calls = _count_claims(env)
        n = 20
        polls = [asyncio.create_task(_poll(env, _body(f"w{i}", 20))) for i in range(n)]
        await until(lambda: len(calls) == n)  # every poll looked once and now waits
        await asyncio.sleep(0.3)
        assert len(calls) == n
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        t0 = time.monotonic()
        job = await submit(env.state, alice)
        done, _ = await asyncio.wait(polls, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        elapsed = time.monotonic() - t0
        assert [[j["job_id"] for j in t.result()] for t in done] == [[job]]
        assert elapsed < 2.0  # woken, not found by a timer (the re-check runs every 30 s here)
        await asyncio.sleep(0.3)
        assert len(calls) == n + (0 if handoff else 1), "a new job must wake one waiting claim, not all"
        assert env.state.notifier.waiters.handoffs == (1 if handoff else 0)
        for t in polls:
            t.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        assert len(env.state.notifier.waiters) == 0


async def test_a_known_workers_repoll_waits_without_a_query_and_still_gets_the_next_job(
    database_url: str, tmp_path: Path
) -> None:
    """An idle worker re-polls every ~26 s; its group looked and found nothing just now (and no job
    was announced since), so its new long-poll waits at once instead of querying again."""
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        calls = _count_claims(env)
        assert await _poll(env, _body("w1", 0.05)) == []  # its first claim here: a query (and its row)
        assert len(calls) == 1
        repoll = asyncio.create_task(_poll(env, _body("w1", 20)))
        await until(lambda: len(env.state.notifier.waiters) == 1)
        await asyncio.sleep(0.2)
        assert len(calls) == 1, "a known worker's re-poll of an empty group must not query"
        # A worker this process has not seen, or one that changed its name, writes its row with a claim.
        others = [
            asyncio.create_task(_poll(env, _body("w2", 20))),
            asyncio.create_task(_poll(env, {**_body("w1", 20), "name": "renamed"})),
        ]
        await until(lambda: len(calls) == 3)
        rows: list[tuple[Any, ...]] = []
        for _ in range(100):  # their claims commit the rows with their (empty) looks
            async with env.state.engine.connect() as conn:
                sql = text("SELECT worker_id, name FROM workers ORDER BY worker_id")
                rows = [tuple(r) for r in (await conn.execute(sql)).all()]
            if len(rows) == 2 and rows[0][1]:
                break
            await asyncio.sleep(0.05)
        assert rows == [("w1", "renamed"), ("w2", None)]
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        job = await submit(env.state, alice)
        got = await asyncio.wait_for(repoll, 5)  # the oldest waiter: the one that never queried
        assert [j["job_id"] for j in got] == [job]
        assert len(calls) == 3  # leased to it by the job's insert: no query at all
        assert env.state.notifier.waiters.handoffs == 1
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def test_a_job_queued_while_the_only_waiter_runs_its_query_is_not_lost(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        real = env.state.jobs.claim
        looked, go_on = asyncio.Event(), asyncio.Event()

        async def slow(*a: Any, **kw: Any) -> Any:
            rows = await real(*a, **kw)
            if not looked.is_set():
                looked.set()
                await go_on.wait()  # the query found nothing; its answer is still on the way
            return rows

        env.state.jobs.claim = slow
        poll = asyncio.create_task(_poll(env, _body("w1", 20)))
        await asyncio.wait_for(looked.wait(), 5)
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        job = await submit(env.state, alice)  # queued between the waiter's query and its wait
        go_on.set()
        got = await asyncio.wait_for(poll, 3)  # not after the 20 s poll, nor the 30 s re-check
        assert [j["job_id"] for j in got] == [job]


async def test_a_gpu_job_whose_cpu_fallback_falls_due_reaches_a_waiting_cpu_worker(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, claim_recheck_s=0.2, fallback_after_s=1.5, key_cache_ttl_s=0
    )
    async with running_env(settings) as env:
        engine = env.state.engine
        await keystore.set_user_fallback(engine, "alice", cpu=True)
        # alice's GPU worker is live, so her GPU job waits fallback_after_s before a CPU worker may take it
        assert await _poll(env, _body("gpu-box", 0, ["gpu"], ["audio"])) == []
        calls = _count_claims(env)
        cpu = asyncio.create_task(_poll(env, _body("cpu-box", 15, ["cpu"], ["audio"])))
        await until(lambda: len(calls) == 1)
        alice, _ = await make_user(engine, "alice", Scope.client)
        t0 = time.monotonic()
        job = await submit(env.state, alice, "audio", LaneKind.gpu)
        got = await asyncio.wait_for(cpu, 10)
        elapsed = time.monotonic() - t0
        assert [j["job_id"] for j in got] == [job]
        assert 1.3 <= elapsed < 4.0, elapsed  # not before the fallback is due, and soon after it
        # one waiter, one shared re-check every 0.2 s: a handful of queries, not a storm
        assert len(calls) <= 4 + elapsed / 0.2, len(calls)


async def test_a_retry_whose_backoff_ends_reaches_a_waiting_worker(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, claim_recheck_s=0.2, retry_base_s=1.0, retry_max_s=1.0
    )
    async with running_env(settings) as env:
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        job = await submit(env.state, alice)
        [leased] = await _poll(env, _body("w1", 5))
        resp = await env.client.post(
            "/worker/fail",
            headers=env.worker,
            json={"job_id": job, "lease_token": leased["lease_token"], "error": "flaky", "retryable": True},
        )
        assert resp.status_code == 200, resp.text
        t0 = time.monotonic()
        got = await _poll(env, _body("w1", 15))
        elapsed = time.monotonic() - t0
        assert [j["job_id"] for j in got] == [job]
        assert elapsed < 4.0, elapsed  # backoff (jittered, <= 1 s) + a re-check period, not the poll's 15 s


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # processes share PostgreSQL only
async def test_a_job_queued_by_another_server_process_wakes_a_waiter_here(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        await until(lambda: env.state.notifier.listening)
        calls = _count_claims(env)
        polls = [asyncio.create_task(_poll(env, _body(f"w{i}", 20))) for i in range(5)]
        await until(lambda: len(calls) == 5)
        other = create_app(make_settings(tmp_path / "other", database_url=database_url, claim_recheck_s=30.0))
        async with other.router.lifespan_context(other):
            alice, _ = await make_user(other.state.morag.engine, "alice", Scope.client)
            t0 = time.monotonic()
            job = await submit(other.state.morag, alice)
            done, _ = await asyncio.wait(polls, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            assert time.monotonic() - t0 < 2.0
        assert [[j["job_id"] for j in t.result()] for t in done] == [[job]]
        await asyncio.sleep(0.3)
        assert len(calls) == 6  # one waiter of this process looked, the others stayed off the database
        for t in polls:
            t.cancel()
        await asyncio.gather(*polls, return_exceptions=True)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # processes share PostgreSQL only
async def test_a_result_completed_by_another_server_process_answers_a_wait_here(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/process/* waits in this process; the worker's result reaches another one. Its NOTIFY wakes
    the wait here long before the safety re-check (set to an hour)."""
    from api import job_ends

    monkeypatch.setattr(job_ends, "END_RECHECK_S", 3600.0)
    settings = make_settings(tmp_path, database_url=database_url, claim_recheck_s=30.0)
    async with running_env(settings) as env:
        await until(lambda: env.state.notifier.listening)
        waiting = asyncio.create_task(
            env.client.post("/process/url?wait_s=60", headers=env.alice, json={"url": "https://a.org/x"})
        )
        [job] = await _poll(env, _body("w1", 5, ctypes=["web"]))
        other = create_app(make_settings(tmp_path / "other", database_url=database_url, claim_recheck_s=30.0))
        async with (
            other.router.lifespan_context(other),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url="http://other") as there,
        ):
            done = {"job_id": job["job_id"], "lease_token": job["lease_token"], "markdown": "# there"}
            resp = await there.post("/worker/complete", headers=env.worker, json={**done, "metadata": {}})
            assert resp.status_code == 200, resp.text
            answer = await asyncio.wait_for(waiting, 10)
    assert answer.status_code == 200 and answer.json()["content"] == "# there"


async def test_a_standby_claim_over_a_flooded_queue_takes_only_another_users_new_job(
    database_url: str, tmp_path: Path
) -> None:
    """A shared worker whose slots are full keeps a standby claim open. It must not take alice's
    queued flood (not on arrival, not on the re-checks); bob's new job wakes it, and its query
    takes bob's job, the first in the shared lane's order, ahead of alice's older ones."""
    settings = make_settings(
        tmp_path, database_url=database_url, claim_recheck_s=0.1, shared_fallback_after_s=0
    )
    async with running_env(settings) as env:
        _, op_key = await make_user(env.state.engine, "operator", Scope.shared_worker)
        shared = {"Authorization": f"Bearer {op_key}"}
        alice, _ = await make_user(env.state.engine, "alice", Scope.client)
        bob, _ = await make_user(env.state.engine, "bob", Scope.client)
        for _ in range(10):
            await submit(env.state, alice)
        busy = await _poll(env, {**_body("s1", 0, lanes=["default"]), "max_jobs": 4}, shared)
        assert len(busy) == 4  # alice's jobs fill the worker's slots
        calls = _count_claims(env)
        standby = asyncio.create_task(
            _poll(env, {**_body("s1", 20, lanes=["default"]), "standby": True}, shared)
        )
        await until(lambda: len(env.state.notifier.waiters) == 1)
        await asyncio.sleep(0.5)  # five re-checks
        assert calls == [] and not standby.done(), "a standby claim must not take the queued flood"
        job = await submit(env.state, bob)
        got = await asyncio.wait_for(standby, 5)
        assert [j["job_id"] for j in got] == [job]
        assert len(calls) == 1


async def test_with_nothing_queued_a_waiting_claim_costs_no_query_of_the_rechecks_or_sweeps(
    database_url: str, tmp_path: Path
) -> None:
    """No queued job at all (the fallback sweep looked), none announced since: the re-check, the
    fallback sweep and the unserved check send nothing. A job queued wakes them all again."""
    from sqlalchemy import event

    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_recheck_s=0.05,
        reaper_interval_s=0.05,
        unserved_check_interval_s=0.05,
        webhook_sweep_interval_s=60,  # its own business (finished jobs), not the queue's
    )
    async with running_env(settings) as env:
        calls = _count_claims(env)
        sent: list[str] = []

        def grab(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            # the fallback sweep's updates and look, the unserved check's lane walk
            if any(m in statement for m in ("SET fallback_at", "SET shared_at", "EXISTS", "min(jobs.lane)")):
                sent.append(statement)

        poll = asyncio.create_task(_poll(env, _body("w1", 20)))
        await until(lambda: len(env.state.notifier.waiters) == 1)
        await until(lambda: not env.state.notifier.waiters.queue_may_hold, timeout=5)
        event.listen(env.state.engine.sync_engine, "before_cursor_execute", grab)
        try:
            before = len(calls)
            await asyncio.sleep(0.6)  # a dozen periods of each
            assert len(calls) == before and sent == [], (len(calls) - before, sent[:3])
            # A job the waiter cannot take (another content type): announced, so they look again.
            bob, _ = await make_user(env.state.engine, "bob", Scope.client)
            await submit(env.state, bob, content_type="web")
            await until(lambda: len(calls) > before and any("SET fallback_at" in s for s in sent), timeout=5)
            assert not poll.done()
        finally:
            event.remove(env.state.engine.sync_engine, "before_cursor_execute", grab)
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)


def test_an_empty_look_that_overlapped_an_announcement_proves_nothing() -> None:
    from api.waiters import Waiters

    waiters = Waiters(1.0)
    assert waiters.queue_may_hold  # nobody has looked yet
    began = waiters.announced
    waiters.offer([("cpu-tasks-1", "echo")])  # a job queued while the look ran
    waiters.none_queued(began)
    assert waiters.queue_may_hold
    waiters.none_queued(waiters.announced)
    assert not waiters.queue_may_hold
    waiters.offer([(None, None)])
    assert waiters.queue_may_hold


async def test_a_job_announced_while_the_sweep_looks_keeps_the_rechecks_on(store: Any) -> None:
    """The sweep's "nothing queued" counts only if no job was announced since the look began."""
    from sqlalchemy import event

    waiters = store.notifier.waiters

    def meanwhile(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "EXISTS" in statement:  # its look at the queue: a job is committed and announced now
            waiters.offer([("cpu-tasks-1", "echo")])

    event.listen(store.engine.sync_engine, "before_cursor_execute", meanwhile)
    try:
        await store.jobs.sweep_fallback()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", meanwhile)
    assert waiters.queue_may_hold
    await store.jobs.sweep_fallback()
    assert not waiters.queue_may_hold
