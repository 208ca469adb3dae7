"""The tidy client API: Location on ingest, ``?status=``, checked cursors, one name for the finish
time and the error, 404 for unknown documents, retry, documents, webhook log, prune, and the
status message of a task no online worker can take."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from api import keystore, webhooks
from api.ids import utcnow
from api.jobs.tables import JOBS as J
from api.jobs.tables import WORKERS as W
from tests.integration.api.conftest import (
    Env,
    check_error,
    check_openapi,
    claim,
    complete,
    make_settings,
    running_env,
)


@pytest.fixture
def settings_overrides(database_url: str) -> dict[str, Any]:
    """Every test here on SQLite and PostgreSQL (the statements live in the job store)."""
    return {"database_url": database_url}


async def _ingest(
    env: Env, url: str = "https://example.org/a", headers: dict[str, str] | None = None, **extra: Any
) -> str:
    resp = await env.client.post(
        "/api/v1/ingest/url", headers=headers or env.alice, json={"url": url, "content_type": "web", **extra}
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/api/v1/status/{resp.json()['task_id']}"
    return str(resp.json()["task_id"])


async def _fail(env: Env, job: dict[str, Any], error: str = "not a page") -> None:
    resp = await env.client.post(
        "/worker/fail",
        headers=env.worker,
        json={
            "job_id": job["job_id"],
            "lease_token": job["lease_token"],
            "error": error,
            "error_class": "bad_input",
            "retryable": False,
        },
    )
    assert resp.status_code == 200, resp.text


async def _final(env: Env, task_id: str) -> dict[str, Any]:
    for _ in range(400):
        body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
        if body["status"] in ("succeeded", "failed", "dead", "canceled"):
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(body)


async def test_every_ingest_route_answers_202_with_location(env: Env) -> None:
    await _ingest(env)
    up = await env.client.post(
        "/api/v1/ingest/file",
        headers=env.alice,
        files={"file": ("a.txt", b"hello")},
        data={"content_type": "echo"},
    )
    assert up.status_code == 202 and up.headers["location"] == f"/api/v1/status/{up.json()['task_id']}"
    batch = await env.client.post(
        "/api/v1/ingest/batch", headers=env.alice, json={"items": [{"url": "https://example.org/b"}]}
    )
    assert batch.status_code == 202
    assert batch.headers["location"] == f"/api/v1/ingest/batch/{batch.json()['batch_id']}"
    follow = await env.client.get(batch.headers["location"], headers=env.alice)
    assert follow.status_code == 200 and follow.json()["total"] == 1


# The old list route takes ?status= and checks its cursor just like /api/v1/tasks.
LISTS = ["/api/v1/tasks", "/api/v1/status/"]


@pytest.mark.parametrize("path", LISTS)
async def test_list_filters_by_status_and_still_by_state(env: Env, path: str) -> None:
    ids = [await _ingest(env, f"https://example.org/{i}") for i in range(3)]
    (job,) = await claim(env, ["web"], wait_s=0)
    await _fail(env, job)
    failed = check_openapi(await env.client.get(f"{path}?status=failed", headers=env.alice), path)
    assert [t["task_id"] for t in failed["tasks"]] == [job["job_id"]]
    assert failed["tasks"][0]["source"] == f"https://example.org/{ids.index(job['job_id'])}"
    old = (await env.client.get(f"{path}?state=queued", headers=env.alice)).json()
    assert {t["task_id"] for t in old["tasks"]} == set(ids) - {job["job_id"]}
    page = (await env.client.get(f"{path}?limit=2", headers=env.alice)).json()
    assert page["next_cursor"] == ids[1]
    rest = (await env.client.get(f"{path}?limit=2&cursor={page['next_cursor']}", headers=env.alice)).json()
    assert [t["task_id"] for t in rest["tasks"]] == [ids[0]]
    assert (await env.client.get(path, headers=env.bob)).json()["tasks"] == []
    bogus = await env.client.get(f"{path}?status=bogus", headers=env.alice)
    assert bogus.status_code == 422


@pytest.mark.parametrize("path", LISTS)
async def test_a_listed_upload_is_named_by_its_file(env: Env, path: str) -> None:
    up = await env.client.post(
        "/api/v1/ingest/file",
        headers=env.alice,
        files={"file": ("notes.txt", b"hi")},
        data={"content_type": "echo"},
    )
    assert up.status_code == 202, up.text
    (task,) = (await env.client.get(path, headers=env.alice)).json()["tasks"]
    assert task["task_id"] == up.json()["task_id"] and task["source"] == "notes.txt"


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("cursor", ["bogus", "0" * 31, "Z" * 32, "'; drop table jobs; --"])
async def test_a_bogus_cursor_is_422_invalid_cursor(env: Env, cursor: str, path: str) -> None:
    resp = await env.client.get(path, params={"cursor": cursor}, headers=env.alice)
    check_error(resp, path, 422, "invalid_cursor")


async def test_process_answers_error_like_status_and_webhook_has_finished_at(env: Env) -> None:
    task = asyncio.create_task(
        env.client.post(
            "/process/url",
            headers=env.alice,
            json={"url": "https://example.org/x", "content_type": "web", "wait_s": 10},
        )
    )
    for _ in range(100):
        jobs = await claim(env, ["web"], wait_s=0)
        if jobs:
            break
        await asyncio.sleep(0.05)
    await _fail(env, jobs[0], "gone")
    body = (await task).json()
    assert body["success"] is False
    assert body["error"] == body["error_message"] == "gone" and body["error_class"] == "bad_input"
    row = await env.state.jobs.list_jobs(None, None, None, 10)
    assert row == []  # anonymous sees nothing of alice's
    record = await env.state.jobs.get_any(jobs[0]["job_id"])
    assert record is not None
    sent = webhooks.payload(record)
    assert sent["finished_at"] == sent["completed_at"] and sent["error"] == "gone"
    assert sent["error_class"] == "bad_input"


async def test_deleting_an_unknown_document_is_404(env: Env) -> None:
    path = "/api/v1/documents/{document_id}"
    check_error(
        await env.client.delete("/api/v1/documents/nope", headers=env.alice), path, 404, "document_not_found"
    )


async def test_documents_list_counts_chunks_and_names_the_source(env: Env) -> None:
    task_id = await _ingest(env, "https://example.org/bees", document_id="bees")
    (job,) = await claim(env, ["web"], wait_s=0)
    await complete(env, job, "# Bees\n\n" + "Honey bees dance to tell where flowers are. " * 60)
    assert (await _final(env, task_id))["status"] == "succeeded"
    path = "/api/v1/documents"
    docs = check_openapi(await env.client.get(path, headers=env.alice), path)["documents"]
    assert len(docs) == 1
    assert docs[0]["document_id"] == "bees" and docs[0]["source"] == "https://example.org/bees"
    assert docs[0]["chunks"] > 1 and docs[0]["task_id"] == task_id
    assert (await env.client.get(path, headers=env.bob)).json()["documents"] == []
    deleted = await env.client.delete("/api/v1/documents/bees", headers=env.alice)
    assert deleted.json()["removed_points"] == docs[0]["chunks"]
    assert (await env.client.get(path, headers=env.alice)).json()["documents"] == []


async def test_retry_a_failed_task_runs_it_again(env: Env) -> None:
    task_id = await _ingest(env)
    (job,) = await claim(env, ["web"], wait_s=0)
    await _fail(env, job)
    path = "/api/v1/tasks/{task_id}/retry"
    check_error(
        await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.bob), path, 404, "task_not_found"
    )
    resp = await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.alice)
    assert resp.status_code == 202 and resp.headers["location"] == f"/api/v1/status/{task_id}"
    assert check_openapi(resp, path) == {"task_id": task_id, "status": "queued"}
    body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
    assert body["status"] == "queued" and body["error"] is None and body["attempts"] == 0
    check_error(
        await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.alice),
        path,
        409,
        "task_not_retryable",
    )
    (again,) = await claim(env, ["web"], wait_s=0)
    assert again["job_id"] == task_id
    await complete(env, again, "# Fine now\n\nsome words")
    assert (await _final(env, task_id))["status"] == "succeeded"


async def test_retry_refuses_when_the_upload_is_gone(env: Env) -> None:
    up = await env.client.post(
        "/api/v1/ingest/file",
        headers=env.alice,
        files={"file": ("a.txt", b"hello")},
        data={"content_type": "echo"},
    )
    task_id = up.json()["task_id"]
    (job,) = await claim(env, ["echo"], wait_s=0)
    await _fail(env, job)
    from sqlalchemy import delete

    from api.models import StoredFile

    async with env.state.engine.begin() as conn:
        await conn.execute(delete(StoredFile.__table__))  # type: ignore[attr-defined]
    resp = await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.alice)
    check_error(resp, "/api/v1/tasks/{task_id}/retry", 409, "input_gone")
    assert (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()["status"] == "failed"


@pytest.mark.parametrize("settings_overrides", [{"webhook_retry_s": 0.0}])
async def test_webhook_delivery_log_per_task(env: Env) -> None:
    task_id = await _ingest(env, webhook_url="http://127.0.0.1:9/hook")  # nothing listens on port 9
    (job,) = await claim(env, ["web"], wait_s=0)
    await _fail(env, job)
    path = "/api/v1/tasks/{task_id}/webhooks"
    for _ in range(200):
        log = check_openapi(
            await env.client.get(f"/api/v1/tasks/{task_id}/webhooks", headers=env.alice), path
        )
        if log["deliveries"]:
            break
        await asyncio.sleep(0.05)
    assert log["webhook_url"] == "http://127.0.0.1:9/hook"
    first = log["deliveries"][0]
    assert first["attempt"] == 1 and first["delivered"] is False and first["error"]
    check_error(
        await env.client.get(f"/api/v1/tasks/{task_id}/webhooks", headers=env.bob),
        path,
        404,
        "task_not_found",
    )
    # A retry starts the log over, so the new final state is delivered like the first.
    assert (await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.alice)).status_code == 202
    log = (await env.client.get(f"/api/v1/tasks/{task_id}/webhooks", headers=env.alice)).json()
    assert log["deliveries"] == []


async def test_prune_deletes_only_old_ended_tasks_of_the_caller(env: Env) -> None:
    old = await _ingest(env, "https://example.org/old")
    (job,) = await claim(env, ["web"], wait_s=0)
    await _fail(env, job)
    young_queued = await _ingest(env, "https://example.org/new")
    bobs = await _ingest(env, "https://example.org/bob", headers=env.bob)
    async with env.state.engine.begin() as conn:
        await conn.execute(
            update(J).values(finished_at=utcnow() - timedelta(days=40)).where(J.c.id.in_([old, bobs]))
        )
        await conn.execute(update(J).values(state="failed").where(J.c.id == bobs))
    path = "/api/v1/tasks/prune"
    assert check_openapi(
        await env.client.post(path, headers=env.alice, json={"older_than_days": 50}), path
    ) == {"deleted": 0}
    assert (await env.client.post(path, headers=env.alice, json={"older_than_days": 30})).json() == {
        "deleted": 1
    }
    check_error(
        await env.client.get(f"/api/v1/status/{old}", headers=env.alice),
        "/api/v1/status/{task_id}",
        404,
        "task_not_found",
    )
    assert (await env.client.get(f"/api/v1/status/{young_queued}", headers=env.alice)).status_code == 200
    assert (await env.client.get(f"/api/v1/status/{bobs}", headers=env.bob)).status_code == 200
    check_error(
        await env.client.post(path, headers=env.alice, json={"older_than_days": 1, "all_users": True}),
        path,
        403,
        "wrong_scope",
    )
    await keystore.create_user(env.state.engine, "root")
    admin = (await keystore.create_key(env.state.engine, "root", keystore.Scope.admin))[1]
    resp = await env.client.post(
        path, headers={"Authorization": f"Bearer {admin}"}, json={"older_than_days": 30, "all_users": True}
    )
    assert resp.json() == {"deleted": 1}


async def test_a_queued_task_nobody_can_take_says_so(env: Env) -> None:
    task_id = await _ingest(env)
    body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
    assert body["message"].startswith("waiting: no online worker takes web jobs")
    # A worker of alice's that takes only echo does not help; one that takes web does.
    assert await claim(env, ["echo"], wait_s=0) == []
    await env.state.jobs.note_unserved()
    body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
    assert body["message"].startswith("waiting: no online worker")
    resp = await env.client.post(
        "/worker/claim",
        headers=env.worker,
        json={"worker_id": "web-worker", "lanes": ["gpu"], "content_types": ["web"], "wait_s": 0},
    )
    assert resp.status_code == 204  # a GPU-lane worker; the web task is in the CPU lane
    await env.state.jobs.note_unserved()
    body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
    assert body["message"].startswith("waiting: no online worker")
    second = await _ingest(env, "https://example.org/second")
    await claim(env, ["web"], wait_s=0)  # both lanes, takes web: claims one, now online
    await env.state.jobs.note_unserved()
    rest = [
        t for t in (await env.client.get("/api/v1/tasks?status=queued", headers=env.alice)).json()["tasks"]
    ]
    assert [t["task_id"] for t in rest] == [second] and rest[0]["message"] is None


async def test_the_note_follows_the_owners_fallback_choice_as_it_is_now(env: Env) -> None:
    """Fallback choices apply at claim time, so the note reads them now, not at enqueue."""
    async with env.state.engine.begin() as conn:  # an operator's shared worker that takes web
        now = utcnow()
        await conn.execute(
            W.insert().values(
                key_id="k" * 32,
                worker_id="shared-1",
                user_id=0,
                shared=True,
                serves_gpu=False,
                serves_cpu=True,
                content_types="web",
                first_seen_at=now,
                last_seen_at=now,
            )
        )
    await keystore.set_user_fallback(env.state.engine, "alice", shared=False)
    task_id = await _ingest(env)

    async def message() -> str | None:
        body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
        return body["message"]  # type: ignore[no-any-return]

    assert (await message() or "").startswith("waiting: no online worker")
    await keystore.set_user_fallback(env.state.engine, "alice", shared=True)
    assert await env.state.jobs.note_unserved() == 1
    assert await message() is None
    await keystore.set_user_fallback(env.state.engine, "alice", shared=False)
    await env.state.jobs.note_unserved()
    assert (await message() or "").startswith("waiting: no online worker")


async def test_a_retried_task_nobody_can_take_says_so_at_once(env: Env) -> None:
    task_id = await _ingest(env)
    (job,) = await claim(env, ["web"], wait_s=0)
    await _fail(env, job)
    async with env.state.engine.begin() as conn:  # the worker went away long ago
        await conn.execute(update(W).values(last_seen_at=utcnow() - timedelta(days=1)))
    assert (await env.client.post(f"/api/v1/tasks/{task_id}/retry", headers=env.alice)).status_code == 202
    body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
    assert body["status"] == "queued"
    assert body["message"].startswith("waiting: no online worker takes web jobs")


async def test_the_server_clears_the_note_once_a_worker_can_take_the_task(
    tmp_path: Path, database_url: str
) -> None:
    """The periodic check runs as one of the app's background services (no call from the test)."""
    settings = make_settings(tmp_path, database_url=database_url, unserved_check_interval_s=0.05)
    async with running_env(settings) as env:
        await _ingest(env)
        await _ingest(env, "https://example.org/second")
        queued = (await env.client.get("/api/v1/tasks?status=queued", headers=env.alice)).json()["tasks"]
        assert all(t["message"].startswith("waiting: no online worker") for t in queued)
        (taken,) = await claim(env, ["web"], wait_s=0)  # a worker of alice's that takes web is online now
        (waiting,) = [t["task_id"] for t in queued if t["task_id"] != taken["job_id"]]
        for _ in range(200):
            body = (await env.client.get(f"/api/v1/status/{waiting}", headers=env.alice)).json()
            if body["message"] is None:
                break
            await asyncio.sleep(0.05)
        assert body["status"] == "queued" and body["message"] is None


async def test_admin_overview_sees_every_lane_and_only_admins(env: Env) -> None:
    await _ingest(env)
    await _ingest(env, headers=env.bob)
    check_error(
        await env.client.get("/api/v1/admin/overview", headers=env.alice),
        "/api/v1/admin/overview",
        403,
        "wrong_scope",
    )
    await keystore.create_user(env.state.engine, "root")
    admin = (await keystore.create_key(env.state.engine, "root", keystore.Scope.admin))[1]
    path = "/api/v1/admin/overview"
    body = check_openapi(await env.client.get(path, headers={"Authorization": f"Bearer {admin}"}), path)
    assert len([lane for lane in body["lanes"] if lane["queued"] == 1]) == 2
    assert body["shared_workers"] == {"workers": []}


async def test_operator_prunes_every_users_old_tasks_from_the_command_line(env: Env) -> None:
    import os
    import subprocess
    import sys

    mine = await _ingest(env, "https://example.org/alice-old")
    bobs = await _ingest(env, "https://example.org/bob-old", headers=env.bob)
    fresh = await _ingest(env, "https://example.org/fresh")
    async with env.state.engine.begin() as conn:
        await conn.execute(
            update(J)
            .values(state="succeeded", finished_at=utcnow() - timedelta(days=10))
            .where(J.c.id.in_([mine, bobs]))
        )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
    environ["MORAG_DATA_DIR"] = str(env.settings.data_dir)
    environ["MORAG_DATABASE_URL"] = env.settings.resolved_database_url()
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "api", "tasks", "prune", "--older-than-days", "7"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "deleted 2 tasks"
    assert (await env.client.get(f"/api/v1/status/{mine}", headers=env.alice)).status_code == 404
    assert (await env.client.get(f"/api/v1/status/{bobs}", headers=env.bob)).status_code == 404
    assert (await env.client.get(f"/api/v1/status/{fresh}", headers=env.alice)).status_code == 200
