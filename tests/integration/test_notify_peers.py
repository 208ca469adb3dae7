"""PostgreSQL: a server process alone on its database sends no NOTIFY; a second one is notified
from the moment it starts (its hello), and the first stops once it has gone (api/notifier.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.notifier import CHANNEL, Notifier, encode_hello
from tests.integration.api.conftest import (
    Env,
    claim,
    complete,
    make_settings,
    record_calls,
    running_env,
    until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]

CLAIM = {"worker_id": "w1", "lanes": ["cpu"], "content_types": ["echo"], "max_jobs": 1}
ECHO = {"url": "https://example.org/a", "content_type": "echo"}


@asynccontextmanager
async def _observer(database_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every notice on the channel, read by a session that is not a server process's listener."""
    seen: list[dict[str, Any]] = []
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(CHANNEL, lambda *a: seen.append(json.loads(a[-1])))
    try:
        yield seen
    finally:
        await conn.close()


@asynccontextmanager
async def _other_server(
    tmp_path: Path, database_url: str, **kw: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(make_settings(tmp_path / "other", database_url=database_url, **kw))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://other", timeout=30
        ) as client,
    ):
        await until(lambda: app.state.morag.notifier.listening)
        yield app, client


async def _work_one(env: Env) -> None:
    resp = await env.client.post("/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)
    assert resp.status_code == 202, resp.text
    [job] = await claim(env, ["echo"], wait_s=0)
    await complete(env, job, "ok")


async def test_a_server_alone_sends_no_notify_and_a_new_one_is_notified_from_its_hello(
    database_url: str, tmp_path: Path
) -> None:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    # One look for other listeners at start and none after: only the hello can tell it of a newcomer.
    settings = make_settings(
        tmp_path, database_url=database_url, notify_peers_check_s=3600, claim_recheck_s=30
    )
    async with _observer(dsn) as seen, running_env(settings) as env:
        notifier = env.state.notifier
        await until(lambda: notifier.listening and not notifier.peers)
        seen.clear()  # its hello
        for _ in range(3):
            await _work_one(env)  # a submit and a completion each
        queued = await env.client.post("/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)
        task = queued.json()["task_id"]
        assert (await env.client.delete(f"/api/v1/ingest/{task}", headers=env.alice)).status_code == 200
        resp = await env.client.post(f"/api/v1/tasks/{task}/retry", headers=env.alice)
        assert resp.status_code == 202, resp.text  # queued again: the store's other publish path
        assert (await env.client.delete(f"/api/v1/ingest/{task}", headers=env.alice)).status_code == 200
        await asyncio.sleep(0.3)
        assert seen == [], "a server alone must not NOTIFY"

        async with _other_server(tmp_path, database_url, claim_recheck_s=30) as (other, there):
            assert notifier.peers, "the newcomer's hello reaches the server already running"
            poll = asyncio.create_task(
                there.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 20})
            )
            await until(lambda: len(other.state.morag.notifier.waiters) == 1)
            t0 = time.monotonic()
            resp = await env.client.post("/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)
            got = await asyncio.wait_for(poll, 10)
            assert got.status_code == 200 and got.json()["jobs"][0]["job_id"] == resp.json()["task_id"]
            assert time.monotonic() - t0 < 2.0  # its NOTIFY, not the other's re-check (30 s)
        assert any("q" in n for n in seen)


async def test_a_server_stops_notifying_once_the_other_has_gone(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=database_url, notify_peers_check_s=0.05)
    async with running_env(settings) as env:
        notifier = env.state.notifier
        await until(lambda: notifier.listening and not notifier.peers)
        looks = record_calls(notifier, "_look_for_peers")
        await asyncio.sleep(0.5)
        assert looks == [], "a process alone asks nothing: a newcomer's hello tells it"
        async with _other_server(tmp_path, database_url, notify_peers_check_s=0.05) as (other, _):
            await until(lambda: notifier.peers and other.state.morag.notifier.peers)
            await asyncio.sleep(0.3)
            assert notifier.peers and len(looks) >= 2  # it looks while it has a peer, and finds it
        await until(lambda: not notifier.peers, timeout=5)


class _SlowLook:
    """A LISTEN connection whose look for other listeners finds none, while a hello arrives."""

    def __init__(self, notifier: Notifier, hello_meanwhile: bool) -> None:
        self.notifier, self.hello_meanwhile = notifier, hello_meanwhile

    async def fetchval(self, *_: Any) -> bool:
        await asyncio.sleep(0.01)
        if self.hello_meanwhile:
            self.notifier._on_notify(encode_hello("someone-else"))
        return False


async def test_a_look_that_began_before_a_hello_does_not_undo_it(database_url: str) -> None:
    notifier = Notifier()
    notifier.listening = True
    await notifier._look_for_peers(_SlowLook(notifier, hello_meanwhile=True))
    assert notifier.peers, "the newcomer said hello after the look began: it must be notified"
    await notifier._look_for_peers(_SlowLook(notifier, hello_meanwhile=False))
    assert not notifier.peers
    never = Notifier(peers_check_s=0)  # never looks: always notifies
    never.listening, never._peers_seen = True, False
    assert never.peers
