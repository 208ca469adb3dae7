"""The smaller findings (#5), on SQLite and PostgreSQL: worker routes do not tell which job ids
exist, download links die when processing ends, a database outage is 503 with Retry-After,
private files, secrets out of repr, last_used recorded, hostile upload names sanitised."""

from __future__ import annotations

import inspect
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

import api.serve
from api import db, keystore
from api.models import StoredFile
from api.serve import serve, server_options
from api.settings import Settings
from tests.integration.api.conftest import Env, claim, make_settings, raw_post, running_env


@pytest.fixture
async def db_env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=0,
        process_wait_default_s=0,
        process_wait_max_s=0,
    )
    async with running_env(settings, raise_app_exceptions=False) as env:
        yield env


async def _submit_file(env: Env, name: str = "n.txt", kind: str = "echo", path: str = "/process/file") -> str:
    resp = await env.client.post(
        f"{path}?wait_s=0", headers=env.alice, files={"file": (name, b"hello")}, data={"content_type": kind}
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


async def test_worker_routes_do_not_tell_whether_a_job_exists(db_env: Env) -> None:
    await _submit_file(db_env)
    (job,) = await claim(db_env, ["echo"], wait_s=0)
    bob_worker = (await keystore.create_key(db_env.state.engine, "bob", keystore.Scope.worker))[1]
    bob = {"Authorization": f"Bearer {bob_worker}"}
    answers = set()
    for route, extra in (("/worker/heartbeat", {}), ("/worker/complete", {"markdown": "x"}),
                         ("/worker/fail", {"error": "x", "retryable": False})):  # fmt: skip
        for job_id, headers in ((job["job_id"], bob), ("no-such-job", bob), ("no-such-job", db_env.worker)):
            body = {"job_id": job_id, "lease_token": "guessed-token", **extra}
            resp = await db_env.client.post(route, headers=headers, json=body)
            answers.add((route, resp.status_code, resp.json()["code"]))
    assert answers == {
        ("/worker/heartbeat", 409, "stale_lease"),
        ("/worker/complete", 409, "stale_lease"),
        ("/worker/fail", 409, "stale_lease"),
    }


async def test_download_link_refused_once_processing_ended(db_env: Env) -> None:
    await _submit_file(db_env, path="/api/v1/ingest/file")
    (job,) = await claim(db_env, ["echo"], wait_s=0)
    link = job["download_url"].replace("http://testserver", "")
    assert (await db_env.client.get(link, headers=db_env.worker)).status_code == 200
    # Another user's worker key with the valid link: 404 like an unknown file (not 403).
    bob_worker = (await keystore.create_key(db_env.state.engine, "bob", keystore.Scope.worker))[1]
    resp = await db_env.client.get(link, headers={"Authorization": f"Bearer {bob_worker}"})
    assert resp.status_code == 404 and resp.json()["code"] == "file_not_found"
    body = {"job_id": job["job_id"], "lease_token": job["lease_token"], "markdown": "# done", "metadata": {}}
    assert (await db_env.client.post("/worker/complete", headers=db_env.worker, json=body)).status_code == 200
    # The ingest job now is (or was) being indexed: the link is dead either way.
    resp = await db_env.client.get(link, headers=db_env.worker)
    assert resp.status_code == 404 and resp.json()["code"] == "file_not_found"


async def test_database_outage_is_503_with_retry_after(db_env: Env) -> None:
    state = db_env.state
    live = state.engine
    dead = db.make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nothing listens
    # Every holder of the engine loses it (the job store, the key cache: cold, so auth asks too).
    state.engine = state.jobs.engine = state.keys.engine = dead
    state.keys._entries.clear()
    try:
        for method, path, headers in (
            ("GET", "/api/v1/status/", db_env.alice),
            ("POST", "/api/v1/ingest/url", db_env.alice),
            ("POST", "/worker/claim", db_env.worker),
        ):
            body: Any = {"url": "https://example.com/", "content_type": "web"} if "ingest" in path else None
            if path == "/worker/claim":
                body = {"worker_id": "w", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 0}
            resp = await db_env.client.request(method, path, headers=headers, json=body)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json()["code"] == "database_unavailable"
            assert int(resp.headers["retry-after"]) >= 1
    finally:
        await state.engine.dispose()
        state.engine = state.jobs.engine = state.keys.engine = live
    assert (await db_env.client.get("/api/v1/status/", headers=db_env.alice)).status_code == 200


async def test_hostile_upload_names_are_sanitised(db_env: Env) -> None:
    long_name = "é" * 200 + ".txt"  # 404 bytes
    for name, expected in (
        (". .", None),
        ("..", "upload"),
        ("../../etc/passwd", "passwd"),
        (long_name, None),
    ):
        task = await _submit_file(db_env, name=name)
        async with db_env.state.engine.begin() as conn:
            stored = (
                await conn.execute(
                    select(StoredFile.__table__.c.original_name).order_by(
                        StoredFile.__table__.c.created_at.desc()
                    )
                )
            ).first()
        assert stored is not None and task
        got = stored[0]
        assert got not in ("", ".", "..") and "/" not in got and len(got.encode()) <= 255
        if expected:
            assert got == expected
    assert got.endswith(".txt")


async def test_keys_list_shows_last_used(db_env: Env) -> None:
    before = {k["id"]: k["last_used_at"] for k in await keystore.list_keys(db_env.state.engine)}
    assert (await db_env.client.get("/api/v1/status/", headers=db_env.alice)).status_code == 200
    after = {k["id"]: k["last_used_at"] for k in await keystore.list_keys(db_env.state.engine)}
    used = [kid for kid in after if after[kid] is not None and before.get(kid) is None]
    assert len(used) == 1  # alice's client key, and only it


async def test_files_are_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_env(settings) as env:
        await _submit_file(env)
        data = settings.data_dir
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "morag.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "files").stat().st_mode) == 0o700
        stored = [p for p in (data / "files").iterdir() if p.is_file()]
        assert stored and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)


def test_settings_repr_hides_secrets() -> None:
    s = Settings(
        secret_key="server-s3cret",
        gemini_api_key="gemini-s3cret",
        qdrant_api_key="qdrant-s3cret",
        database_url="postgresql+asyncpg://morag:db-s3cret@db/morag",
    )
    text = repr(s) + str(s)
    assert "s3cret" not in text
    assert s.secret_bytes() == b"server-s3cret"


def test_serve_passes_connection_limits_to_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, http_keep_alive_s=7, http_limit_concurrency=50, http_max_header_bytes=8192
    )
    opts = server_options(settings)
    assert opts["timeout_keep_alive"] == 7 and opts["limit_concurrency"] == 50
    assert opts["h11_max_incomplete_event_size"] == 8192
    seen: dict[str, Any] = {}
    accepts = inspect.signature(uvicorn.run)

    def run(app: Any, **kw: Any) -> None:
        accepts.bind(app, **kw)  # every option is one this uvicorn takes
        seen.update(kw)

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(api.serve, "configure_logging", lambda *a, **kw: None)  # keep pytest's logging
    serve(settings, host="127.0.0.1", port=0)  # what `python -m api serve` runs
    assert {k: seen[k] for k in opts} == opts


async def test_job_claimed_for_a_departed_long_poll_is_given_back(db_env: Env) -> None:
    """The worker's connection closed while it waited: the job it would have got is queued again."""
    task = await _submit_file(db_env)
    body = json.dumps({"worker_id": "gone", "lanes": ["cpu", "gpu"], "content_types": ["echo"], "wait_s": 0})
    auth = db_env.worker["Authorization"].encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", auth)]
    sent = await raw_post(db_env.app, "/worker/claim", headers, [body.encode()])
    assert sent[0]["status"] == 204  # nobody was there to get the job
    status = (await db_env.client.get(f"/api/v1/status/{task}", headers=db_env.alice)).json()
    assert status["status"] == "queued"
    (job,) = await claim(db_env, ["echo"], wait_s=0)  # the next worker gets it at once, first attempt
    assert job["job_id"] == task and job["attempt"] == 1
