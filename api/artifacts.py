"""Artifacts: binary outputs of a job (thumbnails, keyframes) that its worker uploads before completing.

An upload is bound to the lease: it is admitted only while the lease is the job's current one
(checked before the first byte is written and again, row-locked, when the file is put in place),
streamed through :class:`~api.filestore.FileSink` (size limit, SHA-256, libmagic) into
``data_dir/artifacts/{job_id}/{name}``. Re-uploading a name under the same lease replaces it, so a
retried upload is harmless. A client sees only the artifacts of the lease that completed the job;
the rest (a lost lease's, a failed job's) are swept, and the shown ones go with the input file's
retention after the job ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.errors import Conflict, NotFound, PayloadTooLarge
from api.filestore import FileSink
from api.ids import new_id, utcnow
from api.jobs import JobRecord, JobStore, Lease, TaskStage
from api.jobs.tables import ARTIFACTS as A
from api.logging_setup import task_context
from api.settings import Settings

log = logging.getLogger("morag.artifacts")

#: A plain file name: no separators, and no leading dot (".", "..", hidden and temporary files).
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$"


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "artifacts" / job_id


def _too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the artifact exceeds MORAG_MAX_ARTIFACT_BYTES ({settings.max_artifact_bytes} bytes)",
        code="artifact_too_large",
    )


async def _admit(conn: AsyncConnection, jobs: JobStore, lease: Lease, name: str) -> None:
    """The lease is current and held by the calling key, and one more artifact fits."""
    settings = jobs.settings
    await jobs.lock_lease(conn, lease)
    count = (
        await conn.execute(
            select(func.count()).where(
                A.c.job_id == lease.job_id, A.c.lease_token == lease.token, A.c.name != name
            )
        )
    ).scalar_one()
    if count >= settings.max_artifacts_per_job:
        raise Conflict(
            f"the job already has {count} artifacts (MORAG_MAX_ARTIFACTS_PER_JOB)", code="too_many_artifacts"
        )


async def save_artifact(
    jobs: JobStore, lease: Lease, name: str, chunks: AsyncIterator[bytes], length: int | None
) -> dict[str, Any]:
    """Stream one artifact to disk under the job's lease and record it (replacing the same name)."""
    settings, job_id, token = jobs.settings, lease.job_id, lease.token
    if length is not None and length > settings.max_artifact_bytes:
        raise _too_large(settings)
    async with jobs.engine.begin() as conn:
        await _admit(conn, jobs, lease, name)  # before a byte is written
    folder = artifacts_dir(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    limit = (settings.max_artifact_bytes, "MORAG_MAX_ARTIFACT_BYTES", "artifact_too_large")
    sink = FileSink(settings, None, name, final=folder / f".{new_id()}.tmp", limit=limit)
    try:
        async for chunk in chunks:
            sink.write(chunk)
        info = sink.finish()
    except BaseException:
        sink.abort()
        raise
    row = {
        "job_id": job_id,
        "name": name,
        "lease_token": token,
        "size": info["size"],
        "sha256": info["sha256"],
        "mime": info["mime_type"],
        "created_at": utcnow(),
    }
    try:
        async with jobs.engine.begin() as conn:
            # Again, row-locked: the lease may have been lost or the job canceled while the bytes came.
            await _admit(conn, jobs, lease, name)
            await conn.execute(delete(A).where(A.c.job_id == job_id, A.c.name == name))
            await conn.execute(A.insert().values(**row))
            os.replace(sink.final, folder / name)
    finally:
        sink.final.unlink(missing_ok=True)
    return row


def _visible(job: JobRecord) -> bool:
    """Artifacts are shown once the worker's result is in (the job left the process stage)."""
    return job.result is not None and job.stage != TaskStage.process and job.lease_token is not None


async def list_for_jobs(engine: AsyncEngine, jobs: list[JobRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per job id, the artifacts of the lease that completed it (name order)."""
    leases = {j.id: j.lease_token for j in jobs if _visible(j)}
    if not leases:
        return {}
    async with engine.begin() as conn:
        rows = (
            (await conn.execute(select(A).where(A.c.job_id.in_(list(leases))).order_by(A.c.job_id, A.c.name)))
            .mappings()
            .all()
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["lease_token"] == leases[r["job_id"]]:
            out.setdefault(r["job_id"], []).append(dict(r))
    return out


async def get_artifact(
    engine: AsyncEngine, settings: Settings, job: JobRecord, name: str
) -> tuple[dict[str, Any], Path]:
    """One shown artifact of ``job`` and its file, else NotFound."""
    found = (await list_for_jobs(engine, [job])).get(job.id, [])
    row = next((r for r in found if r["name"] == name), None)
    path = artifacts_dir(settings, job.id) / name
    if row is None or not path.is_file():
        raise NotFound("no such artifact", code="artifact_not_found")
    return row, path


async def sweep_artifacts(jobs: JobStore, settings: Settings) -> int:
    """Drop artifacts no client will see: of another lease (lost, failed, re-queued) or past retention.

    Which rows go is the job store's call (``drop_unseen_artifacts``). Files on disk without a row
    (a crash between write and insert, an abandoned upload) go once they are ``orphan_file_age_s`` old.
    """
    now = utcnow()
    due, known = await jobs.drop_unseen_artifacts()
    removed = 0
    for job_id, name in due:
        (artifacts_dir(settings, job_id) / name).unlink(missing_ok=True)
        removed += 1
        with task_context(job_id):
            log.info("removed artifact %r of job %s (of a lost lease, or past retention)", name, job_id)
    root = settings.data_dir / "artifacts"
    if not root.is_dir():
        return removed
    cutoff = now.timestamp() - settings.orphan_file_age_s
    for folder in root.iterdir():
        for path in folder.iterdir() if folder.is_dir() else []:
            try:
                stale = path.stat().st_mtime < cutoff
            except FileNotFoundError:  # its upload finished or failed meanwhile
                continue
            if (folder.name, path.name) not in known and stale:
                path.unlink(missing_ok=True)
                removed += 1
        with contextlib.suppress(OSError):  # not empty, or gone meanwhile
            # Only a stale folder: an upload that just created it must still find it.
            if folder.stat().st_mtime < cutoff:
                folder.rmdir()
    return removed
