"""Input files: streamed to the data directory with a size limit, hashed on the way in.

A :class:`FileSink` receives the bytes of one upload as they arrive (from the streaming multipart
parser in ``api.multipart``): it enforces ``MORAG_MAX_UPLOAD_BYTES`` on every chunk, hashes with
SHA-256 and keeps the first bytes for content detection. Until ``finish`` renames it, the file is
``<id>.part``; any failure (too large, disk full, client gone) removes it, so nothing
half-written stays behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import BadRequest, InsufficientStorage, PayloadTooLarge
from api.ids import new_id, utcnow
from api.models import StoredFile
from api.settings import Settings

F = StoredFile.__table__  # type: ignore[attr-defined]
SNIFF_BYTES = 8192
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def files_dir(settings: Settings) -> Path:
    path = settings.data_dir / "files"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


MAX_NAME_BYTES = 255


def safe_name(name: str | None) -> str | None:
    """An uploaded file's name as a plain file name: no folders, no control characters, no ``..``,
    at most 255 bytes (the extension kept), so a worker can write it anywhere."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        return "upload"
    if len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        ext = f".{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
        stem = base[: len(base) - len(ext)] if ext else base
        budget = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode()[:budget].decode("utf-8", "ignore")
        base = stem + ext
    return base


def detect_mime(head: bytes) -> str:
    """The MIME type of the content from its first bytes (libmagic), never from the name."""
    import magic

    return str(magic.from_buffer(head, mime=True))


def _storage_error(exc: OSError) -> Exception:
    if exc.errno in _DISK_FULL:
        return InsufficientStorage()
    return exc


class FileSink:
    """One upload being written: limit, hash and sniffing on every chunk; atomic rename at the end."""

    def __init__(
        self,
        settings: Settings,
        user_id: int | None,
        original_name: str | None,
        *,
        final: Path | None = None,
        limit: tuple[int, str, str] | None = None,
    ) -> None:
        """``final`` and ``limit`` (bytes, setting name, error code) let artifact uploads reuse it."""
        self.settings = settings
        self.user_id = user_id
        self.original_name = safe_name(original_name)
        self.file_id = new_id()
        self.final = final or files_dir(settings) / self.file_id
        self.partial = self.final.with_suffix(".part")
        self.limit = limit or (settings.max_upload_bytes, "MORAG_MAX_UPLOAD_BYTES", "upload_too_large")
        self.size = 0
        self.head = b""
        self._digest = hashlib.sha256()
        self._out: IO[bytes] | None = None
        try:
            self._out = open(self.partial, "wb")
            os.chmod(self.partial, 0o600)  # before a byte is written; the folder is 0700 anyway
        except OSError as exc:
            raise _storage_error(exc) from exc

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises PayloadTooLarge / InsufficientStorage after removing the partial file."""
        if not chunk:
            return
        try:
            self.size += len(chunk)
            if self.size > self.limit[0]:
                max_bytes, setting, code = self.limit
                raise PayloadTooLarge(f"the upload exceeds {setting} ({max_bytes} bytes)", code=code)
            if len(self.head) < SNIFF_BYTES:
                self.head += chunk[: SNIFF_BYTES - len(self.head)]
            self._digest.update(chunk)
            assert self._out is not None
            self._out.write(chunk)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def finish(self) -> dict[str, Any]:
        """Close and rename the file; the row to insert (empty uploads are refused)."""
        try:
            assert self._out is not None
            self._out.close()
            self._out = None
            if self.size == 0:
                raise BadRequest("the uploaded file is empty", code="empty_file")
            os.replace(self.partial, self.final)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc) from exc
        except BaseException:
            self.abort()
            raise
        return {
            "id": self.file_id,
            "user_id": self.user_id,
            "path": self.final.name,
            "size": self.size,
            "sha256": self._digest.hexdigest(),
            "mime_type": detect_mime(self.head),
            "original_name": self.original_name,
            "created_at": utcnow(),
        }

    def abort(self) -> None:
        """Drop whatever was written (idempotent)."""
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        self.partial.unlink(missing_ok=True)
        self.final.unlink(missing_ok=True)


async def insert_files(engine: AsyncEngine, settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Record finished uploads; on failure their files are removed too."""
    if not rows:
        return
    try:
        async with engine.begin() as conn:
            await conn.execute(F.insert(), rows)
    except BaseException:
        remove_written(settings, rows)
        raise


def remove_written(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Unlink finished files that will not be recorded (the request failed after they were written)."""
    for row in rows:
        (files_dir(settings) / str(row["path"])).unlink(missing_ok=True)


async def save_stream(
    engine: AsyncEngine,
    settings: Settings,
    user_id: int | None,
    chunks: AsyncIterator[bytes],
    original_name: str | None,
) -> dict[str, Any]:
    """Write ``chunks`` to a new file, enforcing the upload limit while streaming, and record it."""
    sink = FileSink(settings, user_id, original_name)
    try:
        async for chunk in chunks:
            sink.write(chunk)
    except BaseException:
        sink.abort()
        raise
    row = sink.finish()
    await insert_files(engine, settings, [row])
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


async def discard_files(engine: AsyncEngine, settings: Settings, file_ids: list[str]) -> None:
    """Remove files that no job will use (e.g. the job could not be created)."""
    if not file_ids:
        return
    async with engine.begin() as conn:
        await conn.execute(delete(F).where(F.c.id.in_(file_ids)))
    for file_id in file_ids:
        with contextlib.suppress(FileNotFoundError):
            (files_dir(settings) / file_id).unlink()


async def discard_file(engine: AsyncEngine, settings: Settings, file_id: str) -> None:
    """Remove one file that no job will use."""
    await discard_files(engine, settings, [file_id])


async def schedule_deletion(engine: AsyncEngine, settings: Settings, file_id: str, now: datetime) -> None:
    """The job that used this file ended: keep it for the retention period, then sweep it."""
    async with engine.begin() as conn:
        await conn.execute(
            update(F)
            .where(F.c.id == file_id)
            .values(delete_after=now + timedelta(seconds=settings.file_retention_s))
        )


async def sweep_file_store(engine: AsyncEngine, settings: Settings) -> int:
    """Delete files past their retention, and orphans on disk that no row knows."""
    now = utcnow()
    async with engine.begin() as conn:
        due = (await conn.execute(select(F.c.id, F.c.path).where(F.c.delete_after <= now))).all()
        if due:
            await conn.execute(delete(F).where(F.c.id.in_([d.id for d in due])))
    folder = files_dir(settings)
    for d in due:
        (folder / d.path).unlink(missing_ok=True)
    # Orphans: files on disk without a row (a crash between write and insert).
    async with engine.begin() as conn:
        known = {r.path for r in (await conn.execute(select(F.c.path))).all()}
    removed = len(due)
    # An upload in progress touches its .part file with every chunk, so only stale ones go.
    cutoff = now.timestamp() - settings.orphan_file_age_s
    for path in folder.iterdir():
        name = path.name.removesuffix(".part")
        try:
            stale = path.stat().st_mtime < cutoff
        except FileNotFoundError:  # removed meanwhile (its upload failed, another sweep)
            continue
        if path.name not in known and name not in known and stale:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
