"""One job's life on the worker: download -> run in its slot -> deliver, with a heartbeat alongside.

The heartbeat extends the lease at a third of its length and stops the job at once when the server
says it was canceled or the lease is gone; stopping kills the job's child process (see
``worker.slots``), so the work really ends. Failures are reported with their error class; a
stopped job reports nothing except on shutdown, when it gives its lease back for a retry
elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import ErrorClass
from protocol.models import ClaimedJob
from worker.client import LeaseLost, ServerRejected, ServerUnreachable, WorkerClient
from worker.config import WorkerConfig
from worker.delivery import Delivery
from worker.errors import JobCanceled, ProcessingError
from worker.processors.base import JobInput, ProcessResult
from worker.progress import JobProgress
from worker.slots import Slot

log = logging.getLogger("morag.worker")


@dataclass
class JobRun:
    """A claimed job and everything the worker does with it."""

    job: ClaimedJob
    client: WorkerClient
    config: WorkerConfig
    delivery: Delivery
    acquire: Callable[[], Awaitable[Slot]]  # waits for a free slot (a prefetched job waits here)
    lease_s: float
    temp_dir: Path = field(init=False)
    progress: JobProgress = field(init=False)
    lease_deadline: float = field(init=False)  # monotonic time the lease runs out unless extended
    stop_reason: str | None = None  # "canceled" | "lease lost" | "shutdown" | "slot wait"
    # then succeeded | failed | undelivered | canceled | lease lost | shutdown | slot wait
    outcome: str = "running"
    task: asyncio.Task[Any] | None = None
    on_slot_free: Callable[[], None] | None = None  # the runner's: the slot may take the next job
    slot_freed: bool = False
    slot: Slot | None = None  # the slot running it (or holding it next in line), once it has one
    has_slot: asyncio.Event = field(default_factory=asyncio.Event)  # set once ``slot`` is
    processing_s: float = 0.0  # how long the processing ran (decides whether the result is spooled)

    def __post_init__(self) -> None:
        self.temp_dir = self.config.jobs_dir / f"{self.job.job_id}-{self.job.attempt}"
        self.progress = JobProgress(self.job.job_id, self.job.content_type.value)
        self.lease_deadline = time.monotonic() + self.lease_s

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def start(self) -> asyncio.Task[Any]:
        self.task = asyncio.ensure_future(self.run())
        return self.task

    def stop(self, reason: str) -> None:
        """Stop the job now: its processing is killed, its task ends without a result."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if not self.slot_freed and self.slot is not None:  # a slot given back may run the next job
            self.slot.stop(self.job_id)
        if self.task and not self.task.done() and self.outcome == "running":
            self.task.cancel()

    async def run(self) -> None:
        hb = asyncio.ensure_future(self._heartbeat_loop())  # also while a prefetched job waits
        try:
            self.slot = await self._wait_for_slot()
            self.has_slot.set()
            result = await self._work()
            self.outcome = "delivering"
            ok = await self.delivery.deliver(
                self.job.job_id,
                self.job.lease_token,
                result,
                self.lease_deadline,
                self.lease_s,
                self.progress,
                spooled=self._free_slot,  # the result is kept: the slot takes the next job
                spool_first=self.processing_s >= self.config.spool_after_s,
            )
            self.outcome = "succeeded" if ok else "undelivered"
        except (asyncio.CancelledError, JobCanceled):
            await self._after_stop()
        except ProcessingError as err:
            self.outcome = "failed"
            await self._report_failure(err)
        except Exception as exc:  # a bug here must not kill the worker: report it, keep going
            log.exception("job %s: unexpected error", self.job_id)
            self.outcome = "failed"
            await self._report_failure(ProcessingError(f"worker bug: {type(exc).__name__}: {exc}"))
        finally:
            hb.cancel()
            if not self.slot_freed:
                if self.slot is not None:
                    await self.slot.idle()  # a stopped job's process is gone before its files are
                self._free_slot()
            # One lstat of a local path, against a thread hop per job: most echo/URL jobs make none.
            if os.path.lexists(self.temp_dir):  # noqa: ASYNC240
                await asyncio.to_thread(shutil.rmtree, self.temp_dir, True)

    async def _wait_for_slot(self) -> Slot:
        """A slot; a job still waiting for one after ``--prefetch-wait`` (it was leased ahead and
        the jobs before it turned out long) is stopped and given back to the queue, where an idle
        worker can take it."""
        limit = self.config.give_back_after_s
        if limit is None:
            return await self.acquire()
        timer = asyncio.get_running_loop().call_later(limit, self._slot_wait_over)
        try:
            return await self.acquire()
        finally:
            timer.cancel()

    def _slot_wait_over(self) -> None:
        if self.slot is None and self.stop_reason is None:
            log.info(
                "job %s: no free slot after %.1f s; giving it back to the queue",
                self.job_id,
                self.config.give_back_after_s,
            )
            self.stop("slot wait")

    def _free_slot(self) -> None:
        if not self.slot_freed:
            self.slot_freed = True
            if self.on_slot_free is not None:
                self.on_slot_free()

    async def _work(self) -> ProcessResult:
        job = self.job
        path = None
        if job.download_url:
            name = Path(job.file_name or "input").name or "input"
            path = self.temp_dir / "in" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.progress.download(0, job.file_size)
            await self.client.download(
                job.download_url,
                path,
                size=job.file_size,
                sha256=job.file_sha256,
                progress=self.progress.download,
            )
        cookies = None
        if job.cookies:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            cookies = self.temp_dir / "server-cookies.txt"
            cookies.write_text(job.cookies)
            cookies.chmod(0o600)
        inp = JobInput(
            content_type=job.content_type.value,
            options=dict(job.options),
            temp_dir=self.temp_dir / "work",  # made in the slot when the processor uses one
            path=path,
            url=job.source_url,
            cookies_file=cookies,
            file_name=job.file_name,
        )
        self.progress.update("processing", 0.0, "starting")
        started = time.monotonic()
        assert self.slot is not None
        try:
            return await self.slot.run(
                inp, lambda f, m: self.progress.update("processing", f, m), self.job_id
            )
        finally:
            self.processing_s = time.monotonic() - started

    async def _after_stop(self) -> None:
        reason = self.stop_reason or "shutdown"
        self.outcome = reason
        if reason not in ("shutdown", "slot wait"):
            log.info("job %s: stopped (%s)", self.job_id, reason)
            return
        why = {
            "shutdown": "the worker shut down; retrying elsewhere",
            "slot wait": "leased ahead, and the worker's slots stayed busy; back to the queue",
        }[reason]
        try:  # ErrorClass.shutdown: the job was not begun; queued again at once, not an attempt
            await self.client.fail(
                self.job_id,
                self.job.lease_token,
                why,
                ErrorClass.shutdown,
                True,
                max_time_s=10,
            )
            log.info("job %s: lease given back (%s)", self.job_id, reason)
        except Exception as exc:
            log.warning(
                "job %s: could not give the lease back (%s); it frees when the lease ends", self.job_id, exc
            )

    async def _heartbeat_loop(self) -> None:
        interval = max(self.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            fraction, message = self.progress.snapshot()
            try:
                resp = await self.client.heartbeat(
                    self.job_id, self.job.lease_token, fraction, message, max_time_s=interval
                )
            except LeaseLost as exc:
                self.stop("canceled" if exc.canceled else "lease lost")
                return
            except ServerRejected as exc:
                log.warning("job %s: heartbeat refused: %s", self.job_id, exc.message)
                continue
            except ServerUnreachable as exc:
                log.warning(
                    "job %s: heartbeat failed (%s); lease ends in %.0f s",
                    self.job_id,
                    exc.message,
                    self.lease_deadline - time.monotonic(),
                )
                continue
            if resp.canceled:
                self.stop("canceled")
                return
            self.lease_deadline = time.monotonic() + self.lease_s

    async def _report_failure(self, err: ProcessingError) -> None:
        log.warning(
            "job %s failed (%s, %s): %s",
            self.job_id,
            err.error_class.value,
            "will be retried" if err.retryable else "final",
            err.message,
        )
        try:
            await self.client.fail(
                self.job_id,
                self.job.lease_token,
                err.message,
                err.error_class.value,
                err.retryable,
                max_time_s=max(self.lease_deadline - time.monotonic(), 5.0),
            )
        except LeaseLost as exc:
            log.info("job %s: failure not recorded, %s", self.job_id, exc.code)
        except Exception as exc:
            log.warning("job %s: could not report the failure (%s)", self.job_id, exc)
