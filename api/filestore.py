"""Input files: streamed to the data directory with a size limit, hashed on the way in."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import BadRequest, InsufficientStorage, PayloadTooLarge
from api.ids import new_id, utcnow
from api.models import StoredFile
from api.settings import Settings

F = StoredFile.__table__  # type: ignore[attr-defined]
SNIFF_BYTES = 8192


def files_dir(settings: Settings) -> Path:
    path = settings.data_dir / "files"
    path.mkdir(parents=True, exist_ok=True)
    return path


def detect_mime(head: bytes) -> str:
    """The MIME type of the content from its first bytes (libmagic), never from the name."""
    import magic

    return str(magic.from_buffer(head, mime=True))


async def save_stream(
    engine: AsyncEngine,
    settings: Settings,
    user_id: int | None,
    chunks: AsyncIterator[bytes],
    original_name: str | None,
) -> dict[str, Any]:
    """Write ``chunks`` to a new file, enforcing the upload limit while streaming.

    Nothing half-written survives: an oversized, aborted or disk-full upload removes its file.
    """
    file_id = new_id()
    final = files_dir(settings) / file_id
    partial = final.with_suffix(".part")
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with open(partial, "wb") as out:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"the upload exceeds MORAG_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
                        code="upload_too_large",
                    )
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise BadRequest("the uploaded file is empty", code="empty_file")
        os.replace(partial, final)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage() from exc
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    row = {
        "id": file_id,
        "user_id": user_id,
        "path": final.name,
        "size": size,
        "sha256": digest.hexdigest(),
        "mime_type": detect_mime(head),
        "original_name": (original_name or "")[:500] or None,
        "created_at": utcnow(),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(F.insert().values(**row))
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return row


async def get_file(engine: AsyncEngine, file_id: str) -> dict[str, Any] | None:
    async with engine.begin() as conn:
        row = (await conn.execute(select(F).where(F.c.id == file_id))).mappings().first()
    return dict(row) if row else None


async def get_files(engine: AsyncEngine, file_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not file_ids:
        return {}
    async with engine.begin() as conn:
        rows = (await conn.execute(select(F).where(F.c.id.in_(file_ids)))).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def file_path(settings: Settings, row: dict[str, Any]) -> Path:
    return files_dir(settings) / str(row["path"])


async def discard_file(engine: AsyncEngine, settings: Settings, file_id: str) -> None:
    """Remove a file that no job will use (e.g. the job could not be created)."""
    async with engine.begin() as conn:
        await conn.execute(delete(F).where(F.c.id == file_id))
    with contextlib.suppress(FileNotFoundError):
        (files_dir(settings) / file_id).unlink()


async def schedule_deletion(engine: AsyncEngine, settings: Settings, file_id: str, now: datetime) -> None:
    """The job that used this file ended: keep it for the retention period, then sweep it."""
    async with engine.begin() as conn:
        await conn.execute(
            update(F)
            .where(F.c.id == file_id)
            .values(delete_after=now + timedelta(seconds=settings.file_retention_s))
        )
