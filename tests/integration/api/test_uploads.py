"""Uploads: limit enforced while streaming, disk full -> 507, nothing half-written; file retention."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api import filestore
from api.filestore import sweep_file_store
from tests.integration.api.conftest import Env, check_error

PDF = b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\n" + b"0" * 4000 + b"\n%%EOF\n"
BOUNDARY = "testboundary123"


async def _multipart(payload_chunks: int, chunk: bytes, pulled: list[int]) -> AsyncIterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n'
        f"Content-Type: application/pdf\r\n\r\n"
    ).encode() + PDF[:64]
    for _ in range(payload_chunks):
        pulled[0] += len(chunk)
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 100_000}])
async def test_limit_is_enforced_while_streaming(env: Env) -> None:
    before = await env.snapshot()
    pulled = [0]
    # Chunked (no Content-Length): only the streaming check can stop it.
    resp = await env.client.post(
        "/api/v1/ingest/file",
        headers={**env.alice, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=_multipart(1000, b"x" * 10_000, pulled),
    )
    check_error(resp, "/api/v1/ingest/file", 413, "upload_too_large")
    assert pulled[0] < 200_000  # the server stopped reading right past the limit, not after 10 MB
    assert await env.snapshot() == before


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000}])
async def test_declared_length_over_the_limit_is_refused_before_reading(env: Env) -> None:
    before = await env.snapshot()
    resp = await env.client.post(
        "/api/v1/ingest/file", headers=env.alice, files={"file": ("a.pdf", PDF + b"x" * (5 * 1024 * 1024))}
    )
    check_error(resp, "/api/v1/ingest/file", 413, "upload_too_large")
    assert await env.snapshot() == before


async def test_disk_full_answers_507_and_leaves_nothing(env: Env, monkeypatch) -> None:
    real_open = open
    written: list[Path] = []

    class FillingUp:
        """A file that takes the first write, then finds the disk full."""

        def __init__(self, path: Path, mode: str) -> None:
            self.f = real_open(path, mode)
            written.append(Path(path))
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def close(self) -> None:
            self.f.close()

    monkeypatch.setattr(filestore, "open", FillingUp, raising=False)
    before = await env.snapshot()

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\n'
        ).encode()
        for _ in range(5):
            yield PDF
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    resp = await env.client.post(
        "/api/v1/ingest/file",
        headers={**env.alice, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=body(),
    )
    check_error(resp, "/api/v1/ingest/file", 507, "insufficient_storage")
    assert written and not any(p.exists() for p in written)  # the half-written file is gone
    assert await env.snapshot() == before


async def test_two_uploads_keep_their_own_bytes_and_hashes(env: Env) -> None:
    import hashlib

    a, b = PDF + b"a" * 70_000, PDF + b"b" * 130_000
    for payload in (a, b):
        resp = await env.client.post(
            "/api/v1/ingest/file", headers=env.alice, files={"file": ("x.pdf", payload)}
        )
        assert resp.status_code == 202
    async with env.state.engine.begin() as conn:
        rows = (await conn.execute(select(filestore.F).order_by(filestore.F.c.size))).mappings().all()
    assert [r["sha256"] for r in rows] == [hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()]
    assert [(env.settings.data_dir / "files" / r["path"]).read_bytes() for r in rows] == [a, b]
    assert all(r["mime_type"] == "application/pdf" for r in rows)


@pytest.mark.parametrize("settings_overrides", [{"file_retention_s": 0, "orphan_file_age_s": 60}])
async def test_files_kept_until_the_job_ends_then_removed(env: Env) -> None:
    folder = env.settings.data_dir / "files"
    ids = []
    for _ in range(2):
        resp = await env.client.post("/api/v1/ingest/file", headers=env.alice, files={"file": ("x.pdf", PDF)})
        ids.append(resp.json()["task_id"])
    assert await env.state.jobs.schedule_finished_files() == 0
    assert await sweep_file_store(env.state.engine, env.state.settings) == 0
    assert len(list(folder.iterdir())) == 2  # both jobs still queued: both files kept
    await env.client.delete(f"/api/v1/ingest/{ids[0]}", headers=env.alice)
    assert await env.state.jobs.schedule_finished_files() == 1
    assert await sweep_file_store(env.state.engine, env.state.settings) == 1
    (left,) = folder.iterdir()
    job = (await env.client.get(f"/api/v1/status/{ids[1]}", headers=env.alice)).json()
    assert job["status"] == "queued"
    async with env.state.engine.begin() as conn:
        paths = [r.path for r in (await conn.execute(select(filestore.F.c.path))).all()]
    assert paths == [left.name]


@pytest.mark.parametrize("settings_overrides", [{"orphan_file_age_s": 60}])
async def test_sweeper_removes_old_orphans_only(env: Env) -> None:
    folder = filestore.files_dir(env.settings)
    old, fresh, part = folder / "deadbeef", folder / "cafe", folder / "feed.part"
    for p in (old, fresh, part):
        p.write_bytes(b"x")
    past = time.time() - 120
    os.utime(old, (past, past))
    os.utime(part, (past, past))
    # A file row no job uses (the job insert failed after the upload), created long ago.
    row = filestore.FileSink(env.settings, None, "lost.pdf")
    row.write(b"%PDF-1.4 lost")
    record = row.finish()
    from datetime import timedelta

    record["created_at"] -= timedelta(seconds=120)
    await filestore.insert_files(env.state.engine, env.settings, [record])
    assert await env.state.jobs.schedule_finished_files() == 1
    assert await sweep_file_store(env.state.engine, env.state.settings) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["cafe"]
