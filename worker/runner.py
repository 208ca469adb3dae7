"""Drives the worker: claim -> download -> run -> heartbeat -> complete / fail.

One asyncio loop; each job is a task whose processor runs in its own daemon thread (a stuck
processor never blocks the exit). A heartbeat task per job extends the lease at a third of its
length and stops the job at once when the server says it was canceled or the lease is gone.
Results go to a spool directory before they are sent, so a server that is down for a while
still gets them when it returns (as long as the lease allows, even across a worker restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import PROTOCOL_VERSION
from protocol.errors import ErrorClass
from protocol.models import ClaimedJob, ClaimRequest, HelloResponse
from protocol.states import ContentType, LaneKind, Scope
from worker import __version__
from worker.client import AuthFailed, LeaseLost, ServerRejected, ServerUnreachable, WorkerClient
from worker.config import WorkerConfig
from worker.delivery import Delivery
from worker.errors import JobCanceled, ProcessingError
from worker.executor import execute
from worker.processors.base import JobInput, ProcessResult
from worker.progress import JobProgress

log = logging.getLogger("morag.worker")


class FatalSetupError(Exception):
    """The worker cannot run with this setup (wrong key, incompatible server)."""


@dataclass
class RunningJob:
    job: ClaimedJob
    progress: JobProgress
    temp_dir: Path
    lease_deadline: float  # monotonic time the lease runs out unless extended
    canceled: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "canceled" | "lease lost" | "shutdown"
    task: asyncio.Task[Any] | None = None
    thread: threading.Thread | None = None
    outcome: str = "running"


def detect_lanes() -> list[str]:
    """gpu when CTranslate2 sees a CUDA device, else cpu."""
    try:
        import ctranslate2

        return ["gpu"] if int(ctranslate2.get_cuda_device_count()) > 0 else ["cpu"]
    except Exception:  # no ctranslate2 or a broken CUDA runtime: a CPU worker
        return ["cpu"]


class Runner:
    """One worker process."""

    def __init__(self, config: WorkerConfig, client: WorkerClient | None = None) -> None:
        self.config = config
        self.client = client or WorkerClient(
            config.server,
            config.api_key,
            timeout_s=config.request_timeout_s,
            retry_base_s=config.retry_base_s,
            retry_cap_s=config.retry_cap_s,
        )
        self.worker_id = f"{config.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}".replace(" ", "_")[:128]
        self.worker_id = "".join(c if c.isalnum() or c in "._:@-" else "_" for c in self.worker_id)
        self.lease_s = 60.0
        self.lanes: list[str] = []
        self.content_types: list[str] = []
        self.jobs: dict[str, RunningJob] = {}
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._signals = 0
        self.finished: list[RunningJob] = []
        self.delivery = Delivery(self.client, config.spool)
        self._redelivery: asyncio.Task[int] | None = None

    # ----- start-up -------------------------------------------------------------------------
    async def setup(self, hello: HelloResponse | None = None) -> None:
        """Ask the server who we are (retrying while it is down) and decide lanes and types."""
        while hello is None:
            try:
                hello = await self.client.hello()
            except AuthFailed as exc:
                raise FatalSetupError(f"the server refused this key: {exc.message}") from exc
            except ServerUnreachable as exc:
                log.warning("server not reachable (%s); retrying", exc.message)
                if await self._sleep_or_stop(min(self.config.retry_cap_s, 5.0)):
                    raise FatalSetupError("stopped before the server was reachable") from exc
        if hello.protocol_version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
            raise FatalSetupError(
                f"server speaks protocol {hello.protocol_version}, this worker {PROTOCOL_VERSION}: "
                "upgrade the worker (pip install -U morag-remote[worker])"
            )
        self.lease_s = hello.lease_s
        if hello.scope == Scope.shared_worker:
            self.lanes = ["default"]
        else:
            wanted = self.config.lanes or detect_lanes()
            self.lanes = [lane for lane in wanted if lane in {k.value for k in hello.lanes}] or wanted
        from worker.processors import availability, available_content_types

        if self.config.content_types:
            missing = {ct: availability(ct)[1] for ct in self.config.content_types if not availability(ct)[0]}
            if missing:
                raise FatalSetupError("cannot serve " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
            self.content_types = list(self.config.content_types)
        else:
            self.content_types = available_content_types()
        log.info(
            "worker %s serving lanes %s, types %s, %d slot(s), lease %.0f s (server %s, user %s)",
            self.worker_id,
            ",".join(self.lanes),
            ",".join(self.content_types),
            self.config.concurrency,
            self.lease_s,
            hello.server_version,
            hello.user or "-",
        )

    # ----- main loop ------------------------------------------------------------------------
    async def run(self, *, install_signals: bool = True) -> int:
        """Run until stopped (or one job with ``once``); the process exit code."""
        if install_signals:
            self._install_signals()
        try:
            await self.setup()
        except FatalSetupError as exc:
            log.error("%s", exc)
            await self.client.aclose()
            return 2
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        await self.deliver_spooled()
        code = 0
        try:
            code = await self._claim_loop()
            await self._drain()
        finally:
            await self.client.aclose()
        if self.config.once and self.finished:
            return 0 if self.finished[0].outcome == "succeeded" else 1
        return code

    def request_stop(self) -> None:
        """Stop claiming; current jobs get ``grace_s`` to finish before their leases are given back."""
        if not self.stopping.is_set():
            log.info(
                "stopping: no new jobs; %d running job(s) get %.0f s to finish",
                len(self.jobs),
                self.config.grace_s,
            )
        self.stopping.set()

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        self.request_stop()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal)
            except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self._on_signal))

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True when a stop was requested meanwhile."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _claim_loop(self) -> int:
        claimed_total = 0
        while not self.stopping.is_set():
            if self.config.once and claimed_total:
                return 0
            free = self.config.concurrency - len(self.jobs)
            if free <= 0:
                self._slot_freed.clear()
                stop = asyncio.ensure_future(self.stopping.wait())
                slot = asyncio.ensure_future(self._slot_freed.wait())
                await asyncio.wait({stop, slot}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                slot.cancel()
                continue
            req = ClaimRequest(
                worker_id=self.worker_id,
                lanes=[LaneKind(lane) for lane in self.lanes],
                content_types=[ContentType(ct) for ct in self.content_types],
                max_jobs=1 if self.config.once else free,
                wait_s=self.config.claim_wait_s,
                claim_id=uuid.uuid4().hex,
                name=self.config.name[:200],
                version=__version__,
            )
            claim = asyncio.ensure_future(self.client.claim(req))
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not claim.done():
                claim.cancel()
                await self._give_back_claim(req)
                break
            try:
                jobs = claim.result()
            except AuthFailed as exc:
                log.error("the server refused this key: %s", exc.message)
                return 2
            except ServerRejected as exc:
                log.error("claim refused: %s", exc.message)
                await self._sleep_or_stop(self.config.retry_cap_s)
                continue
            except ServerUnreachable as exc:
                log.warning("server not reachable (%s); retrying", exc.message)
                await self._sleep_or_stop(min(self.config.retry_cap_s, 5.0))
                continue
            self._redeliver_spooled()  # the server answers again: results left over go now
            for job in jobs:
                claimed_total += 1
                self._start_job(job)
        return 0

    def _redeliver_spooled(self) -> None:
        """Send spooled results in the background (one pass at a time) while the worker runs, so a
        result that waited out a long outage reaches the server without a restart."""
        if self._redelivery is not None and not self._redelivery.done():
            return
        busy = set(self.jobs)
        if self.delivery.pending(busy):
            self._redelivery = asyncio.create_task(self.delivery.send_all(busy))

    async def _give_back_claim(self, req: ClaimRequest) -> None:
        """A claim cut off by a stop may have leased jobs: fetch them (same claim id), give them back."""
        try:
            replay = req.model_copy(update={"wait_s": 0.0})
            jobs = await self.client.claim(replay)
            for job in jobs:
                await self.client.fail(
                    job.job_id,
                    job.lease_token,
                    "worker shutting down",
                    ErrorClass.shutdown,
                    True,
                    max_time_s=5,
                )
        except Exception as exc:  # best effort: the server's reaper frees them when the lease ends
            log.debug("giving back the interrupted claim failed: %s", exc)

    async def _drain(self) -> None:
        """Wait for running jobs; past the grace period give their leases back."""
        if not self.jobs:
            return
        tasks = [rj.task for rj in self.jobs.values() if rj.task]
        grace = self.config.grace_s if self.stopping.is_set() else None
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for rj in list(self.jobs.values()):
                self._stop_job(rj, "shutdown")
            await asyncio.wait(pending, timeout=30)

    # ----- one job --------------------------------------------------------------------------
    def _start_job(self, job: ClaimedJob) -> None:
        tdir = self.config.jobs_dir / f"{job.job_id}-{job.attempt}"
        rj = RunningJob(
            job=job,
            progress=JobProgress(job.job_id, job.content_type.value),
            temp_dir=tdir,
            lease_deadline=time.monotonic() + self.lease_s,
        )
        self.jobs[job.job_id] = rj
        rj.task = asyncio.ensure_future(self._run_job(rj))
        log.info("job %s [%s] claimed (attempt %d)", job.job_id, job.content_type.value, job.attempt)

    def _stop_job(self, rj: RunningJob, reason: str) -> None:
        if rj.stop_reason is None:
            rj.stop_reason = reason
        rj.canceled.set()
        if rj.task and not rj.task.done() and rj.outcome == "running":
            rj.task.cancel()

    async def _run_job(self, rj: RunningJob) -> None:
        hb = asyncio.ensure_future(self._heartbeat_loop(rj))
        try:
            result = await self._work(rj)
            rj.outcome = "delivering"
            await self._deliver(rj, result)
        except asyncio.CancelledError:
            await self._after_stop(rj)
        except JobCanceled:
            await self._after_stop(rj)
        except ProcessingError as err:
            rj.outcome = "failed"
            await self._report_failure(rj, err)
        except Exception as exc:  # a bug here must not kill the worker: report it, keep going
            log.exception("job %s: unexpected error", rj.job.job_id)
            rj.outcome = "failed"
            await self._report_failure(rj, ProcessingError(f"worker bug: {type(exc).__name__}: {exc}"))
        finally:
            hb.cancel()
            await self._cleanup(rj)
            self.jobs.pop(rj.job.job_id, None)
            self.finished.append(rj)
            self._slot_freed.set()

    async def _after_stop(self, rj: RunningJob) -> None:
        reason = rj.stop_reason or "shutdown"
        rj.outcome = reason
        if reason == "shutdown":
            try:
                await self.client.fail(
                    rj.job.job_id,
                    rj.job.lease_token,
                    "the worker shut down; retrying elsewhere",
                    ErrorClass.shutdown,
                    True,
                    max_time_s=10,
                )
                log.info("job %s: lease given back (shutdown)", rj.job.job_id)
            except Exception as exc:
                log.warning(
                    "job %s: could not give the lease back (%s); it frees when the lease ends",
                    rj.job.job_id,
                    exc,
                )
        else:
            log.info("job %s: stopped (%s)", rj.job.job_id, reason)

    async def _work(self, rj: RunningJob) -> ProcessResult:
        job = rj.job
        rj.temp_dir.mkdir(parents=True, exist_ok=True)
        path = None
        if job.download_url:
            name = Path(job.file_name or "input").name or "input"
            path = rj.temp_dir / "in" / name
            rj.progress.download(0, job.file_size)
            await self.client.download(
                job.download_url,
                path,
                size=job.file_size,
                sha256=job.file_sha256,
                progress=rj.progress.download,
            )
        cookies = None
        if job.cookies:
            cookies = rj.temp_dir / "server-cookies.txt"
            cookies.write_text(job.cookies)
            cookies.chmod(0o600)
        work = rj.temp_dir / "work"
        work.mkdir(exist_ok=True)
        inp = JobInput(
            content_type=job.content_type.value,
            options=dict(job.options),
            temp_dir=work,
            path=path,
            url=job.source_url,
            cookies_file=cookies,
            file_name=job.file_name,
            progress=lambda f, m: rj.progress.update("processing", f, m),
        )
        rj.progress.update("processing", 0.0, "starting")
        return await self._in_thread(rj, inp)

    async def _in_thread(self, rj: RunningJob, inp: JobInput) -> ProcessResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ProcessResult] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                fut.set_result(value) if ok else fut.set_exception(value)

        def target() -> None:
            try:
                res = execute(inp, self.config.processor_config(), rj.canceled)
                loop.call_soon_threadsafe(settle, True, res)
            except BaseException as exc:  # handed to the loop, classified there
                try:
                    loop.call_soon_threadsafe(settle, False, exc)
                except RuntimeError:  # the loop is gone (worker exiting)
                    pass

        rj.thread = threading.Thread(target=target, name=f"job-{rj.job.job_id}", daemon=True)
        rj.thread.start()
        return await fut

    async def _heartbeat_loop(self, rj: RunningJob) -> None:
        interval = max(self.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            fraction, message = rj.progress.snapshot()
            try:
                resp = await self.client.heartbeat(
                    rj.job.job_id, rj.job.lease_token, fraction, message, max_time_s=interval
                )
            except LeaseLost as exc:
                self._stop_job(rj, "canceled" if exc.canceled else "lease lost")
                return
            except ServerRejected as exc:
                log.warning("job %s: heartbeat refused: %s", rj.job.job_id, exc.message)
                continue
            except ServerUnreachable as exc:
                log.warning(
                    "job %s: heartbeat failed (%s); lease ends in %.0f s",
                    rj.job.job_id,
                    exc.message,
                    rj.lease_deadline - time.monotonic(),
                )
                continue
            if resp.canceled:
                self._stop_job(rj, "canceled")
                return
            rj.lease_deadline = time.monotonic() + self.lease_s

    async def _report_failure(self, rj: RunningJob, err: ProcessingError) -> None:
        log.warning(
            "job %s failed (%s, %s): %s",
            rj.job.job_id,
            err.error_class.value,
            "will be retried" if err.retryable else "final",
            err.message,
        )
        try:
            await self.client.fail(
                rj.job.job_id,
                rj.job.lease_token,
                err.message,
                err.error_class.value,
                err.retryable,
                max_time_s=max(rj.lease_deadline - time.monotonic(), 5.0),
            )
        except LeaseLost as exc:
            log.info("job %s: failure not recorded, %s", rj.job.job_id, exc.code)
        except Exception as exc:
            log.warning("job %s: could not report the failure (%s)", rj.job.job_id, exc)

    # ----- results --------------------------------------------------------------------------
    async def _deliver(self, rj: RunningJob, result: ProcessResult) -> None:
        """Spool the result (artifacts too), then send it until the server has it or the lease is gone."""
        rj.progress.update("upload", 0.0, "sending result")
        remaining = rj.lease_deadline - time.monotonic()
        entry = await asyncio.to_thread(
            self.delivery.spool,
            rj.job.job_id,
            rj.job.lease_token,
            result,
            time.time() + remaining + self.lease_s,
        )
        ok = await self.delivery.send(entry, max(remaining + self.lease_s, 5.0), rj.progress)
        rj.outcome = "succeeded" if ok else "undelivered"
        if ok:
            rj.progress.update("upload", 1.0, "done")

    async def deliver_spooled(self) -> int:
        """Send results a previous run could not deliver; returns how many the server took."""
        return await self.delivery.send_all()

    async def _cleanup(self, rj: RunningJob) -> None:
        """Remove the job's temp files, after its processor thread has let go of them."""
        if rj.thread is not None and rj.thread.is_alive():
            await asyncio.to_thread(rj.thread.join, 10.0)
        await asyncio.to_thread(shutil.rmtree, rj.temp_dir, True)
