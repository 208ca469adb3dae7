"""A lease belongs to the key that claimed it: a leaked token is worth nothing to another key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api import keystore
from tests.integration.api.conftest import Env, check_error, claim, make_settings, running_env


@pytest.fixture
async def env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """The app on SQLite and on PostgreSQL."""
    async with running_env(make_settings(tmp_path, database_url=database_url)) as e:
        yield e


async def _running(env: Env) -> dict[str, Any]:
    resp = await env.client.post(
        "/process/file?wait_s=0",
        headers=env.alice,
        files={"file": ("n.txt", b"hello")},
        data={"content_type": "echo"},
    )
    assert resp.status_code == 202, resp.text
    (job,) = await claim(env, ["echo"])
    return job


async def _other_keys(env: Env) -> list[dict[str, str]]:
    bob = (await keystore.create_key(env.state.engine, "bob", keystore.Scope.worker))[1]
    alice2 = (await keystore.create_key(env.state.engine, "alice", keystore.Scope.worker))[1]
    return [{"Authorization": f"Bearer {k}"} for k in (bob, alice2)]


async def test_another_key_with_a_valid_lease_token_gets_the_stale_answer(env: Env) -> None:
    job = await _running(env)
    lease = {"job_id": job["job_id"], "lease_token": job["lease_token"]}
    unknown = {"job_id": "no-such-job", "lease_token": job["lease_token"]}
    for headers in await _other_keys(env):
        for path, body in (
            ("/worker/heartbeat", {**lease, "progress": 0.5, "message": "forged"}),
            ("/worker/complete", {**lease, "markdown": "FORGED BY BOB", "metadata": {}}),
            ("/worker/fail", {**lease, "error": "forged", "error_class": "bad_input", "retryable": False}),
        ):
            forged = await env.client.post(path, headers=headers, json=body)
            check_error(forged, path, 409, "stale_lease")
            # Byte for byte what an unknown job answers: the token's holder learns nothing.
            probe = await env.client.post(path, headers=headers, json={**body, **unknown})
            assert probe.status_code == forged.status_code and probe.json() == forged.json()
    status = (await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)).json()
    assert status["status"] == "running" and status["progress"] == 0.0 and status["result"] is None
    # The real worker still completes, and its result is the one stored.
    done = await env.client.post(
        "/worker/complete", headers=env.worker, json={**lease, "markdown": "# real", "metadata": {}}
    )
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    status = (await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)).json()
    assert status["result"]["markdown"] == "# real"


async def test_a_canceled_job_is_told_only_to_the_key_holding_its_lease(env: Env) -> None:
    job = await _running(env)
    assert (await env.client.delete(f"/api/v1/ingest/{job['job_id']}", headers=env.alice)).status_code == 200
    lease = {"job_id": job["job_id"], "lease_token": job["lease_token"]}
    body = {**lease, "markdown": "late", "metadata": {}}
    for headers in await _other_keys(env):
        check_error(
            await env.client.post("/worker/complete", headers=headers, json=body),
            "/worker/complete",
            409,
            "stale_lease",
        )
    own = await env.client.post("/worker/complete", headers=env.worker, json=body)
    check_error(own, "/worker/complete", 409, "job_canceled")


async def test_the_artifact_lease_token_travels_in_a_header_not_the_url(env: Env) -> None:
    job = await _running(env)
    upload = await env.client.post(
        "/worker/artifact",
        params={"job_id": job["job_id"], "name": "a.png"},
        headers={
            **env.worker,
            "X-Lease-Token": job["lease_token"],
            "Content-Type": "application/octet-stream",
        },
        content=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    )
    assert upload.status_code == 200, upload.text
    assert job["lease_token"] not in str(upload.request.url)
    # A query-string token (an old worker) is refused, not silently accepted from the URL.
    old = await env.client.post(
        "/worker/artifact",
        params={"job_id": job["job_id"], "name": "b.png", "lease_token": job["lease_token"]},
        headers={**env.worker, "Content-Type": "application/octet-stream"},
        content=b"x",
    )
    assert old.status_code == 422


def test_the_access_log_never_shows_a_download_signature_or_a_lease_token() -> None:
    import logging

    from api import logfilter

    logfilter.install()
    access = logging.getLogger("uvicorn.access")
    path = "/files/F1?job=J1&exp=1700000000&sig=c2VjcmV0LXNpZw&lease_token=tok-123"
    record = access.makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200),
        None,
    )
    assert all(f.filter(record) for f in access.filters)
    line = record.getMessage()
    assert "c2VjcmV0LXNpZw" not in line and "tok-123" not in line
    assert "job=J1&exp=1700000000&sig=[redacted]" in line


async def test_several_results_in_one_request_are_stored_in_one_transaction(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.state.keys.ttl_s = 60.0  # the key stays cached: the only commit counted is the batch's
    for _ in range(3):
        resp = await env.client.post(
            "/process/file?wait_s=0",
            headers=env.alice,
            files={"file": ("n.txt", b"hello")},
            data={"content_type": "echo"},
        )
        assert resp.status_code == 202, resp.text
    resp = await env.client.post(
        "/worker/claim",
        headers=env.worker,
        json={"worker_id": "w", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 1, "max_jobs": 3},
    )
    jobs = resp.json()["jobs"]
    assert len(jobs) == 3
    commits: list[str] = []
    statements: list[str] = []

    def count(conn: Any, *_: Any) -> None:
        commits.append("commit")

    def count_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    from sqlalchemy import event

    results = [
        {"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": f"# {i}"}
        for i, j in enumerate(jobs)
    ]
    results.append({"job_id": jobs[0]["job_id"], "lease_token": "stale", "markdown": "forged"})
    import asyncpg

    def sent(name: str) -> Any:  # statements sent by asyncpg itself (api.jobs.base.fetch_direct)
        real = getattr(asyncpg.connection.Connection, name)

        async def record(self: Any, query: str, *args: Any, **kw: Any) -> Any:
            statements.append(query)
            return await real(self, query, *args, **kw)

        return record

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", sent("fetch"))
    monkeypatch.setattr(asyncpg.connection.Connection, "execute", sent("execute"))
    event.listen(env.state.engine.sync_engine, "commit", count)
    event.listen(env.state.engine.sync_engine, "before_cursor_execute", count_statement)
    try:
        batch = await env.client.post("/worker/complete-batch", headers=env.worker, json={"results": results})
    finally:
        event.remove(env.state.engine.sync_engine, "commit", count)
        event.remove(env.state.engine.sync_engine, "before_cursor_execute", count_statement)
    assert batch.status_code == 200, batch.text
    got = batch.json()["results"]
    assert [g["status"] for g in got[:3]] == ["succeeded"] * 3
    assert got[3]["status"] is None and got[3]["error"]["code"] == "stale_lease"
    if env.state.engine.dialect.name == "postgresql":
        # One statement (committed on its own) stores the batch; the refused one is explained after.
        # The listeners are engine-wide: the server's own upkeep loops may run statements (and
        # commit) meanwhile, so only the request's statements on the jobs' lease fence count.
        batch_statements = [s for s in statements if "unnest(" in s]
        per_row = [s for s in statements if "UPDATE jobs" in s and "lease_token = $" in s]
        assert len(batch_statements) == 1 and batch_statements[0].lstrip().startswith("WITH v")
        assert per_row == []
    else:
        assert len(commits) == 1  # one transaction for the whole batch
    for i, j in enumerate(jobs):
        status = (await env.client.get(f"/api/v1/status/{j['job_id']}", headers=env.alice)).json()
        assert status["status"] == "succeeded" and status["result"]["markdown"] == f"# {i}"
    # The same batch again (a retry after a lost answer) gets the same answers and changes nothing.
    again = await env.client.post("/worker/complete-batch", headers=env.worker, json={"results": results[:3]})
    assert [g["status"] for g in again.json()["results"]] == ["succeeded"] * 3
