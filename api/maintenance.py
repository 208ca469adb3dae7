"""Background upkeep inside the server: expired leases, lane fallback, file and artifact retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import and_, delete, select, update

from api import artifacts, jobstore, taskops
from api.filestore import F, files_dir
from api.ids import utcnow
from api.models import Job
from api.state import AppState

log = logging.getLogger("morag.maintenance")
J = Job.__table__  # type: ignore[attr-defined]
FINAL = ["succeeded", "failed", "canceled", "dead"]


async def schedule_finished_files(state: AppState) -> int:
    """Files whose jobs have all ended get a deletion time (after the retention period).

    A file row no job refers to (the job insert failed after the upload) is due once it is older
    than ``orphan_file_age_s``.
    """
    now = utcnow()
    unfinished = select(J.c.file_id).where(J.c.file_id.is_not(None), J.c.state.not_in(FINAL))
    used = select(J.c.file_id).where(J.c.file_id.is_not(None))
    orphan_before = now - timedelta(seconds=state.settings.orphan_file_age_s)
    async with state.engine.begin() as conn:
        res = await conn.execute(
            update(F)
            .where(F.c.delete_after.is_(None), F.c.id.in_(used), F.c.id.not_in(unfinished))
            .values(delete_after=now + timedelta(seconds=state.settings.file_retention_s))
        )
        orphans = await conn.execute(
            update(F)
            .where(F.c.delete_after.is_(None), F.c.id.not_in(used), F.c.created_at < orphan_before)
            .values(delete_after=now)
        )
    return int((res.rowcount or 0) + (orphans.rowcount or 0))


async def sweep_files(state: AppState) -> int:
    """Delete files past their retention, and orphans on disk that no row knows."""
    now = utcnow()
    async with state.engine.begin() as conn:
        due = (await conn.execute(select(F.c.id, F.c.path).where(and_(F.c.delete_after <= now)))).all()
        if due:
            await conn.execute(delete(F).where(F.c.id.in_([d.id for d in due])))
    folder = files_dir(state.settings)
    for d in due:
        (folder / d.path).unlink(missing_ok=True)
    # Orphans: files on disk without a row (a crash between write and insert).
    async with state.engine.begin() as conn:
        known = {r.path for r in (await conn.execute(select(F.c.path))).all()}
    removed = len(due)
    # An upload in progress touches its .part file with every chunk, so only stale ones go.
    cutoff = now.timestamp() - state.settings.orphan_file_age_s
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


async def _every(
    interval: float, name: str, fn: Callable[[], Awaitable[object]], first_delay: float = 0.0
) -> None:
    await asyncio.sleep(first_delay)
    while True:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the loop alive: a passing database error must not stop upkeep
            log.exception("%s failed", name)
        await asyncio.sleep(interval)


class Maintenance:
    """Starts and stops the upkeep loops of one server process."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        s = self.state
        interval = s.settings.reaper_interval_s
        # After a restart the reaper first waits one lease: leases that ran out while the server was
        # down belong to workers that are still busy and will heartbeat or deliver within a lease;
        # reclaiming them at once would throw their finished work away.
        reap = lambda: jobstore.release_expired(s.engine, s.notifier)  # noqa: E731
        self.tasks = [
            asyncio.create_task(_every(interval, "lease reaper", reap, first_delay=s.settings.lease_s)),
            asyncio.create_task(
                _every(
                    interval,
                    "fallback sweep",
                    lambda: jobstore.sweep_fallback(s.engine, s.notifier, s.settings),
                )
            ),
            asyncio.create_task(
                _every(s.settings.file_sweep_interval_s, "file retention", lambda: self._files())
            ),
            asyncio.create_task(
                _every(
                    s.settings.unserved_check_interval_s,
                    "unserved tasks",
                    lambda: taskops.note_unserved(s.engine, s.settings),
                )
            ),
        ]

    async def _files(self) -> None:
        await schedule_finished_files(self.state)
        await sweep_files(self.state)
        await artifacts.sweep_artifacts(self.state.engine, self.state.settings)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
