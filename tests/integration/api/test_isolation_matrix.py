"""Isolation matrix, on SQLite and PostgreSQL: three users, each with a client and a worker key,
plus the operator's shared worker key. Every user owns a running job (leased to their own
worker, with an artifact and a signed download link), a finished job, a batch and cookies.
Every endpoint is tried on every other user's objects with every key, including the owner's
valid lease token and download link: a crossing is a 2xx answer or another user's data in a
list. The count must be 0, and afterwards every object is as its owner left it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api import keystore
from protocol.paths import LEASE_TOKEN_HEADER
from tests.integration.api.conftest import Env, make_settings, running_env
from tests.integration.api.test_artifacts import png

USERS = ("alice", "bob", "carol")


@dataclass
class Owned:
    user: str
    client: dict[str, str]
    worker: dict[str, str]
    running: str = ""
    lease: str = ""
    download: str = ""
    finished: str = ""
    batch: str = ""
    batch_task: str = ""
    domain: str = ""


@pytest.fixture
async def world(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Env, dict[str, Owned], dict[str, str]]]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=0,
        process_wait_default_s=0,
        shared_fallback_after_s=0,
    )
    async with running_env(settings, raise_app_exceptions=False) as env:
        engine = env.state.engine
        await keystore.create_user(engine, "carol")
        await keystore.create_user(engine, "operator")
        shared = await _bearer(engine, "operator", keystore.Scope.shared_worker)
        owned: dict[str, Owned] = {}
        for user in USERS:
            client = await _bearer(engine, user, keystore.Scope.client)
            worker = await _bearer(engine, user, keystore.Scope.worker)
            owned[user] = await _populate(env, Owned(user, client, worker))
        yield env, owned, shared


async def _bearer(engine: Any, user: str, scope: keystore.Scope) -> dict[str, str]:
    return {"Authorization": f"Bearer {(await keystore.create_key(engine, user, scope))[1]}"}


async def _claim(env: Env, worker: dict[str, str]) -> dict[str, Any]:
    body = {"worker_id": "w", "lanes": ["cpu", "gpu"], "content_types": ["echo"], "wait_s": 0, "max_jobs": 1}
    resp = await env.client.post("/worker/claim", headers=worker, json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["jobs"][0])


async def _populate(env: Env, o: Owned) -> Owned:
    c = env.client
    # A finished job with a result.
    resp = await c.post(
        "/process/file?wait_s=0",
        headers=o.client,
        files={"file": ("f.txt", b"x")},
        data={"content_type": "echo"},
    )
    o.finished = resp.json()["task_id"]
    job = await _claim(env, o.worker)
    done = {
        "job_id": job["job_id"],
        "lease_token": job["lease_token"],
        "markdown": f"secret of {o.user}",
        "metadata": {},
    }
    assert (await c.post("/worker/complete", headers=o.worker, json=done)).status_code == 200
    # A running job, leased to the owner's worker, with an artifact and a download link.
    resp = await c.post(
        "/api/v1/ingest/file",
        headers=o.client,
        files={"file": ("r.txt", b"y")},
        data={"content_type": "echo"},
    )
    o.running = resp.json()["task_id"]
    job = await _claim(env, o.worker)
    assert job["job_id"] == o.running
    o.lease, o.download = job["lease_token"], job["download_url"].replace("http://testserver", "")
    params = {"job_id": o.running, "name": "a.png"}
    lease = {LEASE_TOKEN_HEADER: o.lease}
    assert (
        await c.post("/worker/artifact", params=params, headers={**o.worker, **lease}, content=png())
    ).status_code == 200
    # A queued batch and cookies for a domain of the user's own.
    body = {"items": [{"url": f"https://{o.user}.example.com/x", "content_type": "web"}]}
    resp = await c.post("/api/v1/ingest/batch", headers=o.client, json=body)
    o.batch, o.batch_task = resp.json()["batch_id"], resp.json()["task_ids"][0]
    o.domain = f"{o.user}.example.com"
    cookie = f".{o.domain}\tTRUE\t/\tTRUE\t1999999999\tSID\t{o.user}-cookie\n"
    resp = await c.put(
        "/api/v1/cookies", headers={**o.client, "content-type": "text/plain"}, content=cookie.encode()
    )
    assert resp.status_code == 200
    return o


def _lease_routes(o: Owned) -> list[tuple[str, str, dict[str, Any]]]:
    """Routes that take the owner's valid lease token (finding #2 is what fences them by key)."""
    lease = {"job_id": o.running, "lease_token": o.lease}
    return [
        ("POST", "/worker/heartbeat", {"json": {**lease, "progress": 0.5}}),
        ("POST", "/worker/fail", {"json": {**lease, "error": "forged", "retryable": False}}),
        ("POST", "/worker/complete", {"json": {**lease, "markdown": "FORGED", "metadata": {}}}),
    ]


def _routes(o: Owned) -> list[tuple[str, str, dict[str, Any]]]:
    """Every endpoint that names one of ``o``'s objects (mutations last)."""
    guessed = {"job_id": o.running, "lease_token": "0" * 32}
    return [
        ("GET", f"/api/v1/status/{o.running}", {}),
        ("GET", f"/api/v1/status/{o.finished}", {}),
        ("GET", f"/api/v1/status/{o.running}/artifacts/a.png", {}),
        ("GET", f"/api/v1/ingest/batch/{o.batch}", {}),
        ("GET", o.download, {}),  # the owner's valid signed link
        (  # the owner's valid lease token, in its header
            "POST",
            "/worker/artifact",
            {
                "params": {"job_id": o.running, "name": "b.png"},
                "headers": {LEASE_TOKEN_HEADER: o.lease},
                "content": png(),
            },
        ),
        ("POST", "/worker/heartbeat", {"json": guessed}),
        ("POST", "/worker/fail", {"json": {**guessed, "error": "x", "retryable": False}}),
        ("POST", "/worker/complete", {"json": {**guessed, "markdown": "FORGED", "metadata": {}}}),
        ("DELETE", f"/api/v1/ingest/{o.batch_task}", {}),
        ("DELETE", f"/api/v1/ingest/{o.running}", {}),
        ("DELETE", f"/api/v1/cookies/{o.domain}", {}),
    ]


def _keys(owned: dict[str, Owned], owner: str, shared: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    keys = [
        (f"{u}-{kind}", getattr(owned[u], kind)) for u in USERS if u != owner for kind in ("client", "worker")
    ]
    return [*keys, ("operator-shared", shared)]


async def _crossings(env: Env, owned: dict[str, Owned], shared: dict[str, str], routes: Any) -> list[str]:
    found = []
    for owner, o in owned.items():
        for label, key in _keys(owned, owner, shared):
            for method, path, kw in routes(o):
                headers = {**key, **kw.get("headers", {})}
                kw = {k: v for k, v in kw.items() if k != "headers"}
                resp = await env.client.request(method, path, headers=headers, **kw)
                assert resp.status_code < 500, (method, path, label, resp.text)
                if resp.status_code < 300:
                    found.append(f"{label} {method} {path} -> {resp.status_code} on {owner}'s object")
    return found


async def _unchanged(env: Env, owned: dict[str, Owned]) -> None:
    for o in owned.values():
        status = (await env.client.get(f"/api/v1/status/{o.running}", headers=o.client)).json()
        assert status["status"] == "running"
        hb = await env.client.post(
            "/worker/heartbeat", headers=o.worker, json={"job_id": o.running, "lease_token": o.lease}
        )
        assert hb.status_code == 200 and hb.json()["canceled"] is False  # still the owner's lease
        batch_task = (await env.client.get(f"/api/v1/status/{o.batch_task}", headers=o.client)).json()
        assert batch_task["status"] == "queued"
        cookies = (await env.client.get("/api/v1/cookies", headers=o.client)).json()
        assert [d["domain"] for d in cookies["domains"]] == [o.domain]
        finished = (await env.client.get(f"/api/v1/status/{o.finished}", headers=o.client)).json()
        assert f"secret of {o.user}" in str(finished)


async def test_no_key_reaches_another_users_objects(world: Any) -> None:
    env, owned, shared = world
    found = await _crossings(env, owned, shared, _routes)
    # Lists: only the caller's own tasks and cookie domains.
    for owner, o in owned.items():
        for label, key in _keys(owned, owner, shared):
            listing = await env.client.get("/api/v1/status/", headers=key)
            cookies = await env.client.get("/api/v1/cookies", headers=key)
            for resp, secret in ((listing, o.running), (listing, o.finished), (cookies, o.domain)):
                if resp.status_code < 300 and secret in resp.text:
                    found.append(f"{label} sees {secret} of {owner} in {resp.request.url.path}")
    attempts = sum(len(_keys(owned, u, shared)) * len(_routes(owned[u])) for u in USERS)
    assert attempts == 3 * 5 * 12
    assert found == [], "\n".join(found)
    await _unchanged(env, owned)


async def test_another_users_valid_lease_token_gets_nowhere(world: Any) -> None:
    env, owned, shared = world
    found = await _crossings(env, owned, shared, _lease_routes)
    assert found == [], "\n".join(found)
    await _unchanged(env, owned)
