"""Background upkeep inside the server: expired leases, lane fallback, file and artifact retention,
the note on queued tasks no online worker can take, and the batched worker presence renewals.

The lines these write about one job (a lease expired, a fallback became due, an artifact removed)
carry its task id (``api/jobs/upkeep.py``, ``api/artifacts.py``); the totals below name no task.
"""

from __future__ import annotations

import contextlib
import logging

from api import artifacts
from api.background import BackgroundService
from api.filestore import sweep_file_store
from api.jobs import JobStore
from api.jobs.base import PRESENCE_FLUSH_S
from api.settings import Settings

log = logging.getLogger("morag.upkeep")


class LeaseReaper(BackgroundService):
    """Returns jobs whose lease ran out to the queue."""

    name = "lease reaper"

    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        # After a restart the reaper first waits one lease: leases that ran out while the server was
        # down belong to workers that are still busy and will heartbeat or deliver within a lease;
        # reclaiming them at once would throw their finished work away.
        super().__init__(settings.reaper_interval_s, first_delay_s=settings.lease_s)
        self.jobs = jobs

    async def run_once(self) -> bool:
        await self.jobs.release_expired()
        return False


class FallbackSweep(BackgroundService):
    """Makes jobs claimable by their fallback once their own lane has no live worker."""

    name = "fallback sweep"

    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        super().__init__(settings.reaper_interval_s)
        self.jobs = jobs

    async def run_once(self) -> bool:
        await self.jobs.sweep_fallback()
        return False


class FileRetention(BackgroundService):
    """Deletes input files and artifacts past their retention, and orphans on disk."""

    name = "file retention"

    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        super().__init__(settings.file_sweep_interval_s)
        self.jobs = jobs
        self.settings = settings

    async def run_once(self) -> bool:
        await self.jobs.schedule_finished_files()
        files = await sweep_file_store(self.jobs.engine, self.settings)
        removed = await artifacts.sweep_artifacts(self.jobs, self.settings)
        if files or removed:
            log.info("file retention: removed %d input files and %d artifacts", files, removed)
        return False


class UnservedCheck(BackgroundService):
    """Tells queued tasks whether any online worker can take them (and clears it once one can)."""

    name = "unserved tasks"

    def __init__(self, jobs: JobStore, settings: Settings) -> None:
        super().__init__(settings.unserved_check_interval_s)
        self.jobs = jobs

    async def run_once(self) -> bool:
        await self.jobs.note_unserved()
        return False


class PresenceWriter(BackgroundService):
    """Writes the batched presence refreshes of workers that keep re-polling (api/jobs/base.py)."""

    name = "worker presence"

    def __init__(self, jobs: JobStore) -> None:
        super().__init__(PRESENCE_FLUSH_S)
        self.jobs = jobs

    async def run_once(self) -> bool:
        await self.jobs.flush_presence()
        return False

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):  # the last second's refreshes, if the database is there
            await self.jobs.flush_presence()


def upkeep_services(jobs: JobStore, settings: Settings) -> list[BackgroundService]:
    """The upkeep loops of one server process."""
    return [
        LeaseReaper(jobs, settings),
        FallbackSweep(jobs, settings),
        FileRetention(jobs, settings),
        UnservedCheck(jobs, settings),
        PresenceWriter(jobs),
    ]
