"""POST /worker/artifact (fenced by the lease, streamed, limited) and the client's view of artifacts."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from api import keystore
from api.artifacts import sweep_artifacts
from api.jobs.tables import ARTIFACTS as A
from api.jobs.tables import JOBS as J
from protocol.paths import LEASE_TOKEN_HEADER
from tests.integration.api.conftest import Env, check_error, check_openapi, claim, complete

UPLOAD = "/worker/artifact"
STATUS = "/api/v1/status/{task_id}"
DOWNLOAD = "/api/v1/status/{task_id}/artifacts/{name}"


@pytest.fixture
def extra() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings_overrides(database_url: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Every test here on SQLite and on PostgreSQL: the fencing must hold on both."""
    return {"database_url": database_url, **extra}


def png(payload: bytes = b"\x00\xff\x00\x00") -> bytes:
    """A valid 1x1 PNG (libmagic says image/png); ``payload`` varies its bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(payload))
        + chunk(b"IEND", b"")
    )


async def running_job(env: Env) -> dict[str, Any]:
    """A process job of alice's, claimed by her worker."""
    resp = await env.client.post(
        "/process/file?wait_s=0",
        headers=env.alice,
        files={"file": ("n.txt", b"hello")},
        data={"content_type": "echo"},
    )
    assert resp.status_code == 202, resp.text
    (job,) = await claim(env, ["echo"])
    return job


async def upload(
    env: Env,
    job: dict[str, Any],
    name: str,
    data: Any,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    params = {"job_id": job["job_id"], "name": name}
    lease = {LEASE_TOKEN_HEADER: token or job["lease_token"]}
    return await env.client.post(
        UPLOAD,
        params=params,
        content=data,
        headers={**(headers or env.worker), **lease, "Content-Type": "application/octet-stream"},
    )


def on_disk(env: Env) -> list[str]:
    root = env.settings.data_dir / "artifacts"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def rows(env: Env) -> list[dict[str, Any]]:
    async with env.state.engine.begin() as conn:
        return [dict(r) for r in (await conn.execute(select(A).order_by(A.c.name))).mappings().all()]


async def test_upload_complete_list_and_download(env: Env) -> None:
    job = await running_job(env)
    image = png()
    body = check_openapi(await upload(env, job, "thumbnail.png", image), UPLOAD)
    assert body == {
        "job_id": job["job_id"],
        "name": "thumbnail.png",
        "size": len(image),
        "sha256": hashlib.sha256(image).hexdigest(),
        "mime": "image/png",
    }
    assert on_disk(env) == [f"{job['job_id']}/thumbnail.png"]
    task = f"/api/v1/status/{job['job_id']}"
    # Not shown while running: only the lease that completes the job shows its artifacts.
    assert check_openapi(await env.client.get(task, headers=env.alice), STATUS)["artifacts"] == []
    await complete(env, job, "# done", {"artifacts": ["thumbnail.png"]})
    status = check_openapi(await env.client.get(task, headers=env.alice), STATUS)
    (art,) = status["artifacts"]
    assert art["name"] == "thumbnail.png" and art["size"] == len(image) and art["mime"] == "image/png"
    assert art["url"] == f"http://testserver{task}/artifacts/thumbnail.png"
    listed = (await env.client.get("/api/v1/status/", headers=env.alice)).json()["tasks"]
    assert [t["artifacts"] for t in listed] == [status["artifacts"]]
    got = await env.client.get(art["url"], headers=env.alice)
    assert got.status_code == 200 and got.content == image
    assert got.headers["content-type"] == "image/png" and got.headers["x-content-type-options"] == "nosniff"
    check_error(await env.client.get(art["url"], headers=env.bob), DOWNLOAD, 404, "task_not_found")
    check_error(await env.client.get(art["url"], headers=env.worker), DOWNLOAD, 403, "wrong_scope")
    check_error(
        await env.client.get(f"{task}/artifacts/other.png", headers=env.alice),
        DOWNLOAD,
        404,
        "artifact_not_found",
    )
    # After the completion the lease can upload nothing more.
    check_error(await upload(env, job, "late.png", image), UPLOAD, 409, "stale_lease")


async def test_fencing_stale_canceled_unknown_and_other_users_key(env: Env) -> None:
    job = await running_job(env)
    check_error(await upload(env, job, "a.png", png(), token="not-the-lease"), UPLOAD, 409, "stale_lease")
    # An unknown job and another key holding the valid token get the stale-lease answer: no leak.
    check_error(await upload(env, {**job, "job_id": "nope"}, "a.png", png()), UPLOAD, 409, "stale_lease")
    bob_worker = (await keystore.create_key(env.state.engine, "bob", keystore.Scope.worker))[1]
    resp = await upload(env, job, "a.png", png(), headers={"Authorization": f"Bearer {bob_worker}"})
    check_error(resp, UPLOAD, 409, "stale_lease")
    check_error(await upload(env, job, "a.png", png(), headers=env.alice), UPLOAD, 403, "wrong_scope")
    assert (await env.client.delete(f"/api/v1/ingest/{job['job_id']}", headers=env.alice)).status_code == 200
    check_error(await upload(env, job, "a.png", png()), UPLOAD, 409, "job_canceled")
    assert on_disk(env) == [] and await rows(env) == []


BAD_NAMES = ["../x", "", "x" * 101, "..", ".", ".hidden", "a/b", "a\\b", "a b", "é.png"]


async def test_bad_names_are_refused(env: Env) -> None:
    job = await running_job(env)
    for name in BAD_NAMES:
        check_error(await upload(env, job, name, png()), UPLOAD, 422, "validation_error")
    assert on_disk(env) == [] and await rows(env) == []


async def test_longest_name_is_accepted(env: Env) -> None:
    job = await running_job(env)
    assert (await upload(env, job, "x" * 100, png())).status_code == 200


@pytest.mark.parametrize("extra", [{"max_artifact_bytes": 1000}])
async def test_size_limit_while_streaming_and_declared(env: Env) -> None:
    job = await running_job(env)
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for i in range(50):
            pulled.append(i)
            yield b"x" * 100

    check_error(await upload(env, job, "big.bin", body()), UPLOAD, 413, "artifact_too_large")
    assert len(pulled) < 50  # refused at the limit, not after the whole body
    check_error(await upload(env, job, "big.bin", b"x" * 1001), UPLOAD, 413, "artifact_too_large")
    assert on_disk(env) == [] and await rows(env) == []
    assert (await upload(env, job, "fits.bin", b"x" * 1000)).status_code == 200
    check_error(await upload(env, job, "empty.bin", b""), UPLOAD, 400, "empty_file")
    assert on_disk(env) == [f"{job['job_id']}/fits.bin"]


async def test_retry_replaces_the_same_name(env: Env) -> None:
    job = await running_job(env)
    first, second = png(b"\x00\x01\x02\x03"), png(b"\x00\x09\x08\x07")
    assert (await upload(env, job, "t.png", first)).status_code == 200
    assert (await upload(env, job, "t.png", second)).status_code == 200
    (row,) = await rows(env)
    assert row["sha256"] == hashlib.sha256(second).hexdigest()
    assert on_disk(env) == [f"{job['job_id']}/t.png"]
    await complete(env, job, "# done")
    got = await env.client.get(f"/api/v1/status/{job['job_id']}/artifacts/t.png", headers=env.alice)
    assert got.content == second


@pytest.mark.parametrize("extra", [{"max_artifacts_per_job": 2}])
async def test_too_many_artifacts(env: Env) -> None:
    job = await running_job(env)
    for name in ("a.png", "b.png"):
        assert (await upload(env, job, name, png())).status_code == 200
    check_error(await upload(env, job, "c.png", png()), UPLOAD, 409, "too_many_artifacts")
    assert (
        await upload(env, job, "b.png", png(b"\x00\x00\x00\x01"))
    ).status_code == 200  # a retry still fits
    assert sorted(r["name"] for r in await rows(env)) == ["a.png", "b.png"]


async def test_lost_lease_artifacts_are_dropped_and_not_shown(env: Env) -> None:
    job = await running_job(env)
    assert (await upload(env, job, "old.png", png())).status_code == 200
    assert (await upload(env, job, "both.png", png(b"\x00\x00\x00\x05"))).status_code == 200
    async with env.state.engine.begin() as conn:  # the lease ran out; the reaper re-queues the job
        await conn.execute(update(J).where(J.c.id == job["job_id"]).values(lease_expires_at=J.c.created_at))
    assert await env.state.jobs.release_expired() == 1
    assert await sweep_artifacts(env.state.jobs, env.settings) == 2
    assert on_disk(env) == [] and await rows(env) == []
    (again,) = await claim(env, ["echo"])
    check_error(await upload(env, job, "old.png", png()), UPLOAD, 409, "stale_lease")
    image = png(b"\x00\x00\x00\x06")
    assert (await upload(env, again, "both.png", image)).status_code == 200
    await complete(env, again, "# done")
    status = (await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)).json()
    assert [a["name"] for a in status["artifacts"]] == ["both.png"]
    assert await sweep_artifacts(env.state.jobs, env.settings) == 0  # within retention: kept


async def test_failed_job_artifacts_are_dropped(env: Env) -> None:
    job = await running_job(env)
    assert (await upload(env, job, "a.png", png())).status_code == 200
    resp = await env.client.post(
        "/worker/fail",
        headers=env.worker,
        json={
            "job_id": job["job_id"],
            "lease_token": job["lease_token"],
            "error": "broken",
            "error_class": "bad_input",
            "retryable": False,
        },
    )
    assert resp.json()["status"] == "failed"
    assert await sweep_artifacts(env.state.jobs, env.settings) == 1
    assert on_disk(env) == [] and await rows(env) == []


@pytest.mark.parametrize("extra", [{"file_retention_s": 0, "orphan_file_age_s": 60}])
async def test_completed_artifacts_go_with_retention_and_orphans_when_old(env: Env) -> None:
    import os
    import time

    job = await running_job(env)
    assert (await upload(env, job, "a.png", png())).status_code == 200
    folder: Path = env.settings.data_dir / "artifacts" / job["job_id"]
    fresh, old = folder / ".upload.tmp", folder / "crashed.png"
    fresh.write_bytes(b"in progress")
    old.write_bytes(b"x")
    past = time.time() - 120
    os.utime(old, (past, past))
    assert await sweep_artifacts(env.state.jobs, env.settings) == 1  # the old orphan; the running job's stay
    assert sorted(p.name for p in folder.iterdir()) == [".upload.tmp", "a.png"]
    await complete(env, job, "# done")
    assert await sweep_artifacts(env.state.jobs, env.settings) == 1  # retention 0: gone once the job ended
    assert sorted(p.name for p in folder.iterdir()) == [".upload.tmp"]
    status = (await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)).json()
    assert status["artifacts"] == []
