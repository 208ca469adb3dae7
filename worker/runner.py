"""Drives the worker: hello, then the claim loop, handing each claimed job to a ``JobRun``.

One asyncio loop. The runner claims as many jobs as it has free slots (``--concurrency``), plus as
many again while the recent jobs are short (``--prefetch``, ``Runner.prefetch``): prefetched jobs
wait for a slot in ``SlotPool.acquire`` with their heartbeat running. While every slot and every
prefetched place is taken, one *standby* claim stays open (``--standby``): the server wakes it only
for a new job that no other waiting claim could take, and that job goes to the next free slot
ahead of the prefetched ones, so another user's job does not wait for this worker's next batch;
each job's life (download, processing in its slot's child process, heartbeat, delivery) is in
``worker.job``, the slots in ``worker.slots``, results on their way to the server in
``worker.delivery``. On SIGINT/SIGTERM it stops claiming, gives running jobs ``--grace`` seconds,
then stops them and gives their leases back; the HTTP client closes only after every result that
was ready has been delivered (or spooled for the next start).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import os
import signal
import uuid
from collections.abc import Awaitable

from protocol import FEATURE_CLAIM_RESULTS, FEATURE_CLAIM_STANDBY, PROTOCOL_VERSION
from protocol.errors import ErrorClass
from protocol.models import ClaimedJob, ClaimRequest, HelloResponse
from protocol.states import ContentType, LaneKind, Scope
from worker import __version__
from worker.client import AuthFailed, ServerRejected, ServerUnreachable, WorkerClient
from worker.config import WorkerConfig, backoff_delay
from worker.delivery import Delivery
from worker.job import JobRun
from worker.slots import Slot, SlotPool, make_pool

log = logging.getLogger("morag.worker")
# The longest a finished job's result waits for a claim to ride on before a claim (or, with no
# room for a job, a completion of its own) goes anyway.
RIDE_WAIT_S = 0.05
# --prefetch -1 leases at most this many jobs ahead per slot (a claim of 36 with 4 slots). What bounds
# a prefetched job's wait is the time rule (Runner.prefetch) and --prefetch-wait. Measured at stop 31
# (docs/benchmarks.md): jobs of a few ms drain 1.3-1.4x faster at 8 than at 3 per slot; 24 drained
# faster still in the own lane, but slower in the shared lane (1,749 against 3,452 jobs/s) and kept
# another user's job behind the flood's batches (p99 11-52 ms against 5-6).
AUTO_AHEAD_PER_SLOT = 8


class FatalSetupError(Exception):
    """The worker cannot run with this setup (wrong key, incompatible server)."""


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
        self.device: str | None = None  # what processes the jobs, shown in the server's worker list
        self.jobs: dict[str, JobRun] = {}  # every job not yet over (processing or delivering)
        self.processing: set[str] = set()  # the jobs holding a slot or waiting for one (prefetched)
        self._recent: collections.deque[float] = collections.deque(maxlen=max(8, 2 * config.concurrency))
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._full = asyncio.Event()  # set while the claim loop waits with its prefetch all taken
        self.standby = False  # standby claims are on (the server has the feature; Runner.setup)
        self._signals = 0
        self.finished: list[JobRun] = []
        self.delivery = Delivery(self.client, config.spool)
        self._redelivery: asyncio.Task[int] | None = None
        self.pool: SlotPool | None = None

    # ----- start-up -------------------------------------------------------------------------
    async def setup(self, hello: HelloResponse | None = None) -> None:
        """Ask the server who we are (retrying while it is down) and decide lanes and types."""
        failures = 0
        while hello is None:
            try:
                hello = await self.client.hello()
            except AuthFailed as exc:
                raise FatalSetupError(f"the server refused this key: {exc.message}") from exc
            except ServerUnreachable as exc:
                from worker.check import unreachable_fix  # check imports this module

                log.warning(
                    "server not reachable (%s); retrying; %s",
                    exc.message,
                    unreachable_fix(self.config.server, exc.message),
                )
                if await self._sleep_or_stop(self._retry_delay(failures)):
                    raise FatalSetupError("stopped before the server was reachable") from exc
                failures += 1
        if hello.protocol_version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
            raise FatalSetupError(
                f"server speaks protocol {hello.protocol_version}, this worker {PROTOCOL_VERSION}: "
                "install the worker of the server's release (pip install -U '.[worker]')"
            )
        self.lease_s = hello.lease_s
        self.client.completions.riding = FEATURE_CLAIM_RESULTS in hello.features
        self.standby = (
            self.config.standby > 0 and not self.config.once and FEATURE_CLAIM_STANDBY in hello.features
        )
        if hello.scope == Scope.shared_worker:
            self.lanes = ["default"]
        else:
            wanted = self.config.lanes or detect_lanes()
            self.lanes = [lane for lane in wanted if lane in {k.value for k in hello.lanes}] or wanted
        from worker.check import describe_device  # check imports this module
        from worker.processors import REGISTRY, availability

        self.device = describe_device(self.config.device)

        why_not = {ct: why for ct in REGISTRY for ok, why in [availability(ct)] if not ok}
        if self.config.content_types:
            missing = {ct: why_not.get(ct, "unknown content type") for ct in self.config.content_types}
            missing = {ct: why for ct, why in missing.items() if ct in why_not or ct not in REGISTRY}
            if missing:
                raise FatalSetupError("cannot serve " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
            self.content_types = list(self.config.content_types)
        else:
            self.content_types = [ct for ct in REGISTRY if ct not in why_not]
        for ct, why in why_not.items():
            if not self.config.content_types or ct in self.config.content_types:
                log.info("not offering %s: %s", ct, why)
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
    async def run(self, *, install_signals: bool = True, freeze_heap: bool = False) -> int:
        """Run until stopped (or one job with ``once``); the process exit code. ``freeze_heap``
        (``python -m worker``): once set up, what is alive is moved out of the cyclic garbage
        collector's reach (``gc.freeze``), so its full collections walk only what the jobs made:
        the worker's CPU per job of a drain fell 0.43 -> 0.35 ms (docs/benchmarks.md, stop 31)."""
        if install_signals:
            self._install_signals()
        try:
            await self.setup()
        except FatalSetupError as exc:
            log.error("%s", exc)
            await self.client.aclose()
            return 2
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.pool = make_pool(
            self.config.processor_config(),
            self.config.concurrency,
            self.config.isolation,
            log_format=self.config.log_format,
            kill_after_s=self.config.kill_after_s,
        )
        self.pool.warm()
        if freeze_heap:
            gc.collect()
            gc.freeze()
        code = 0
        try:
            await self.deliver_spooled()
            code = await self._claim_loop()
            await self._drain()
        finally:
            # Results are delivered (or spooled for the next start) before the client closes.
            if self._redelivery is not None:
                await asyncio.gather(self._redelivery, return_exceptions=True)
            await self.pool.close()
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

    def _retry_delay(self, failures: int) -> float:
        return backoff_delay(failures, self.config.retry_base_s, self.config.retry_cap_s)

    async def _claim_loop(self) -> int:
        over = asyncio.Event()
        standby = asyncio.ensure_future(self._standby_claims(over)) if self.standby else None
        try:
            return await self._claims()
        finally:
            over.set()
            if standby is not None:
                await standby  # its claim, if cut off, is given back
            await self.client.completions.flush()  # results waiting for a claim go on their own

    async def _claims(self) -> int:
        claimed_total = 0
        failures = 0  # claims in a row that met an outage or a refusal
        completions = self.client.completions
        force = False  # results have waited RIDE_WAIT_S for a claim: it goes now
        while not self.stopping.is_set():
            if self.config.once and claimed_total:
                return 0
            prefetch = self.prefetch()
            free = self.config.concurrency + prefetch - len(self.processing)
            slot_idle = len(self.processing) < self.config.concurrency
            if free <= 0 or not (slot_idle or free >= prefetch or force):
                # The next claim goes when a slot frees (with prefetch: when as many jobs ended as
                # are prefetched); the results that freed them ride on it.
                completions.ride_open = True
                self._slot_freed.clear()
                if prefetch > 0:
                    self._full.set()  # a standby claim may go (short jobs only: a long one waits)
                stop = asyncio.ensure_future(self.stopping.wait())
                slot = asyncio.ensure_future(self._slot_freed.wait())
                timeout = RIDE_WAIT_S if completions.waiting() else None
                done, _ = await asyncio.wait(
                    {stop, slot}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                self._full.clear()
                stop.cancel()
                slot.cancel()
                if not done and completions.waiting():
                    if free > 0:
                        force = True
                    else:  # no room for a job: the results go on their own
                        completions.send_waiting()
                continue
            force = False
            req = self._claim_request(1 if self.config.once else min(free, 100))
            riders = completions.take_riders()
            # A claim carrying results is answered at once, so results finishing meanwhile can
            # wait for the next one; a long-poll may last wait_s, so they go on their own.
            completions.ride_open = bool(riders)
            claim = asyncio.ensure_future(self.client.claim(req, riders))
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            completions.ride_open = False
            if not claim.done() and riders:
                await asyncio.wait({claim})  # answered at once: let the results it carries land
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
                await self._sleep_or_stop(self._retry_delay(failures))
                failures += 1
                continue
            failures = 0
            if self.stopping.is_set() and jobs:  # leased as the stop came: back to the queue at once
                await self._give_back(jobs)
                break
            self._redeliver_spooled()  # the server answers again: results left over go now
            for job in jobs:
                claimed_total += 1
                self._start_job(job)
            if jobs:  # the jobs start before the next claim is built and sent
                await asyncio.sleep(0)
        return 0

    def _claim_request(self, max_jobs: int, standby: bool = False) -> ClaimRequest:
        """A new claim (a fresh idempotency id) for up to ``max_jobs`` jobs."""
        return ClaimRequest(
            worker_id=self.worker_id,
            lanes=[LaneKind(lane) for lane in self.lanes],
            content_types=[ContentType(ct) for ct in self.content_types],
            max_jobs=max_jobs,
            wait_s=self.config.claim_wait_s,
            claim_id=uuid.uuid4().hex,
            name=self.config.name[:200],
            version=__version__,
            device=self.device,
            standby=standby,
        )

    async def _standby_claims(self, over: asyncio.Event) -> None:
        """One standby claim at a time while the claim loop waits with every slot and prefetched
        place taken (``_full``): a job it gets starts in the next free slot, ahead of the
        prefetched ones. It ends when ``over`` is set (the claim loop ended); a claim in flight
        then is given back."""
        failures = 0
        ended = asyncio.ensure_future(over.wait())
        try:
            while not over.is_set():
                full = asyncio.ensure_future(self._full.wait())
                await asyncio.wait({full, ended}, return_when=asyncio.FIRST_COMPLETED)
                full.cancel()
                if over.is_set():
                    return
                req = self._claim_request(1, standby=True)
                claim = asyncio.ensure_future(self.client.claim(req))
                await asyncio.wait({claim, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not claim.done():
                    claim.cancel()
                    await self._give_back_claim(req)
                    return
                try:
                    jobs = claim.result()
                except Exception as exc:  # whatever it is, the claim loop goes on; this one retries
                    if isinstance(exc, AuthFailed | ServerRejected | ServerUnreachable):
                        log.debug("standby claim failed: %s", exc)  # the claim loop meets it and says so
                    else:
                        log.warning("standby claim failed: %r", exc)
                    await asyncio.wait({ended}, timeout=self._retry_delay(failures))
                    failures += 1
                    continue
                failures = 0
                if jobs and (self.stopping.is_set() or over.is_set()):
                    await self._give_back(jobs)
                    return
                for job in jobs:
                    run = self._start_job(job, first=True)
                    # One standby job at a time: the next standby claim goes once this one holds
                    # a slot (or ended), so prefetched jobs are never overtaken by more than one.
                    started = asyncio.ensure_future(run.has_slot.wait())
                    assert run.task is not None
                    await asyncio.wait({started, run.task, ended}, return_when=asyncio.FIRST_COMPLETED)
                    started.cancel()
        finally:
            ended.cancel()

    def prefetch(self) -> int:
        """How many jobs to lease beyond the slots now, while every recent job ran shorter than
        ``--prefetch-below`` (a claim then carries more results and leases more jobs; long jobs
        are never held back from other workers), else none.

        ``--prefetch N`` leases N ahead. ``-1`` (the default) leases as many as the slots start
        within ``--prefetch-below`` at the longest recent job's length (so a leased job waits
        about that long at most), at least one per slot and at most ``AUTO_AHEAD_PER_SLOT``:
        jobs of a few ms go 8 per slot ahead (stop 23: 3), one claim per ~8 rounds of the slots
        instead of one per round (docs/benchmarks.md, stops 23 and 31). A prefetched job that
        waits ``--prefetch-wait`` for a slot goes back to the queue (``JobRun``)."""
        cfg = self.config
        if cfg.once or cfg.prefetch == 0 or not self._recent:
            return 0
        longest = max(self._recent)
        if longest >= cfg.prefetch_below_s:
            return 0
        if cfg.prefetch > 0:
            return cfg.prefetch
        within = int(cfg.concurrency * cfg.prefetch_below_s / max(longest, 1e-6))
        return max(cfg.concurrency, min(within, AUTO_AHEAD_PER_SLOT * cfg.concurrency))

    def pipeline_depth(self) -> int:
        """How many jobs a slot may hold (the one it runs and those written to its child behind
        it): ``1 + --pipeline`` while every recent job ran shorter than ``--pipeline-below``
        (the jobs then cost less than a slot's round trip to its child), else 1."""
        cfg = self.config
        if cfg.pipeline <= 0 or cfg.once or not self._recent or max(self._recent) >= cfg.pipeline_below_s:
            return 1
        return 1 + cfg.pipeline

    def _acquire(self, first: bool = False) -> Awaitable[Slot]:
        assert self.pool is not None
        return self.pool.acquire(self.pipeline_depth(), first)

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
            replay = req.model_copy(update={"wait_s": 0.0, "retry": True})
            await self._give_back(await self.client.claim(replay))
        except Exception as exc:  # best effort: the server's reaper frees them when the lease ends
            log.debug("giving back the interrupted claim failed: %s", exc)

    async def _give_back(self, jobs: list[ClaimedJob]) -> None:
        for job in jobs:
            await self.client.fail(
                job.job_id, job.lease_token, "worker shutting down", ErrorClass.shutdown, True, max_time_s=5
            )

    async def _drain(self) -> None:
        """Wait for running jobs; past the grace period give their leases back."""
        if not self.jobs:
            return
        if self.stopping.is_set():
            for run in list(self.jobs.values()):
                if run.slot_freed:
                    continue
                if run.slot is None or run.slot.waiting(run.job_id):  # not begun: back at once
                    run.stop("shutdown")
        tasks = [run.task for run in self.jobs.values() if run.task]
        grace = self.config.grace_s if self.stopping.is_set() else None
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for run in list(self.jobs.values()):
                run.stop("shutdown")  # a job already delivering its result goes on delivering
            # Each job's own deadlines (its lease) bound this wait: no result is cut off mid-send.
            await asyncio.wait(pending)

    def _start_job(self, job: ClaimedJob, first: bool = False) -> JobRun:
        """Start ``job``'s run; ``first``: it takes the next free slot, ahead of prefetched jobs."""
        assert self.pool is not None
        acquire = functools.partial(self._acquire, first)
        run = JobRun(job, self.client, self.config, self.delivery, acquire, self.lease_s)
        run.on_slot_free = lambda: self._slot_done(run)
        self.jobs[job.job_id] = run
        self.processing.add(job.job_id)
        run.start().add_done_callback(lambda _: self._job_done(run))
        log.info("job %s [%s] claimed (attempt %d)", job.job_id, job.content_type.value, job.attempt)
        return run

    def _slot_done(self, run: JobRun) -> None:
        """The job's processing is over (its result is kept, or it failed, or it was stopped while
        waiting for a slot): the slot takes the next job while the result is delivered."""
        assert self.pool is not None
        self.processing.discard(run.job_id)
        if run.slot is not None:
            self.pool.give_back(run.slot)
        if run.processing_s > 0:
            self._recent.append(run.processing_s)
        elif run.stop_reason == "slot wait":
            # Leased ahead and given back: the jobs in the slots run long now. Counted as one that
            # long, it stops the prefetch (else the next claim would lease the same jobs again)
            # until as many short jobs as the runner remembers have run since.
            self._recent.append(self.config.give_back_after_s or self.config.prefetch_below_s)
        self._slot_freed.set()

    def _job_done(self, run: JobRun) -> None:
        self.jobs.pop(run.job_id, None)
        self.finished.append(run)

    async def deliver_spooled(self) -> int:
        """Send results a previous run could not deliver; returns how many the server took."""
        return await self.delivery.send_all()
