"""Prometheus metrics: ``GET /metrics``, safe with several server processes.

Two kinds of numbers:

* Events counted in this process (requests, durations, upload bytes, and the queue events the job
  store reports through ``observe_*`` / ``count_*`` below). With ``PROMETHEUS_MULTIPROC_DIR`` set
  (``python -m api serve --workers N`` sets it) every process writes them to files there and any
  process answers /metrics with the sum of all.
* The queue's live state, read through the job store at each scrape (``count_live_jobs``,
  ``count_online_workers``): queued and running jobs by lane kind, the oldest queued job, workers
  online. The same answer whichever process is asked; only live rows are read, through partial
  indexes, so a scrape costs the same however long the history of ended jobs grows.

Ended jobs are counted as they end (``morag_jobs_finished{lane,state}``, from the job events and
the reaper), never by scanning the table. ``morag_processing_seconds_recent`` is the last hour of
this process's results (with several processes, ``rate(morag_processing_seconds_sum[1h]) /
rate(morag_processing_seconds_count[1h])`` gives the whole server's).

Lanes are labelled by kind (gpu, cpu, default), not by user: one series per kind, whatever the
number of users.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ids import utcnow
from api.jobs.records import JobEvent, JobState, TaskStage, is_final
from protocol.states import ContentType, lane_kind_for

if TYPE_CHECKING:
    from api.jobs.store import JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_PROCESSING_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Routes whose request bodies are uploads (files in, artifacts in).
_UPLOAD_ROUTES = ("/api/v1/ingest/file", "/process/file", "/worker/artifact")
# A claim's lanes, read from the start of its small JSON body (no full parse on the hot path).
_LANES_IN_BODY = re.compile(rb'"lanes"\s*:\s*\[([^\]]*)\]')
_LANE_NAME = re.compile(rb'"(gpu|cpu|default)"')

REQUESTS = Counter("morag_http_requests", "HTTP requests answered.", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "morag_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
UPLOAD_BYTES = Counter("morag_upload_bytes", "Bytes received in uploads (files and artifacts).", ["route"])
DISPATCH_SECONDS = Histogram(
    "morag_dispatch_latency_seconds",
    "From a job's creation to its first claim (first attempts).",
    ["lane"],
    buckets=_LATENCY_BUCKETS,
)
CLAIM_WAIT_SECONDS = Histogram(
    "morag_claim_wait_seconds",
    "How long a worker's long-poll waited before its answer.",
    ["lane"],
    buckets=_LATENCY_BUCKETS,
)
PROCESSING_SECONDS = Histogram(
    "morag_processing_seconds",
    "From claim to result, by content type.",
    ["content_type"],
    buckets=_PROCESSING_BUCKETS,
)
LEASE_EXPIRIES = Counter("morag_lease_expiries", "Leases that ran out (worker lost).", ["lane"])
RETRIES = Counter("morag_job_retries", "Jobs re-queued for another attempt.", ["lane"])
DEAD = Counter("morag_jobs_dead", "Jobs that ran out of attempts.", ["lane"])
FINISHED = Counter("morag_jobs_finished", "Jobs that ended, by lane kind and final state.", ["lane", "state"])


def lane_kind(lane: str) -> str:
    """``gpu-tasks-7`` -> ``gpu``; ``default`` stays."""
    return lane.split("-", 1)[0] if lane != "default" else lane


# --- Hooks for the job store / routes (call them where the event happens) ---------------------


def observe_dispatch(lane: str, seconds: float) -> None:
    """A job was claimed ``seconds`` after it became claimable (run_after / fallback time)."""
    DISPATCH_SECONDS.labels(lane_kind(lane)).observe(max(seconds, 0.0))


def observe_claim_wait(lanes: list[str], seconds: float) -> None:
    """A claim request answered after waiting ``seconds`` (its first lane labels it)."""
    CLAIM_WAIT_SECONDS.labels(lane_kind(lanes[0]) if lanes else "none").observe(max(seconds, 0.0))


def observe_processing(content_type: str, seconds: float) -> None:
    """A worker's result came in ``seconds`` after its claim."""
    PROCESSING_SECONDS.labels(content_type).observe(max(seconds, 0.0))
    RECENT.add(content_type, max(seconds, 0.0))


def count_lease_expiries(lane: str, n: int = 1) -> None:
    """The reaper took ``n`` expired leases back."""
    LEASE_EXPIRIES.labels(lane_kind(lane)).inc(n)


def count_retry(lane: str, n: int = 1) -> None:
    """A failed or expired job went back to the queue for another attempt."""
    RETRIES.labels(lane_kind(lane)).inc(n)


def count_dead(lane: str, n: int = 1) -> None:
    """A job ended ``dead`` (no attempts left)."""
    DEAD.labels(lane_kind(lane)).inc(n)
    count_finished(lane, JobState.dead, n)


def count_finished(lane: str, state: JobState, n: int = 1) -> None:
    """A job reached a final state (``dead`` through :func:`count_dead`)."""
    FINISHED.labels(lane_kind(lane), state.value).inc(n)


# --- HTTP middleware ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _counted(method: str, route: str, status: int) -> Any:
    """The request counter of one (method, route template, status): looked up once, not per request."""
    return REQUESTS.labels(method, route, str(status))


@functools.lru_cache(maxsize=4096)
def _timed(method: str, route: str) -> Any:
    return REQUEST_SECONDS.labels(method, route)


class MetricsMiddleware:
    """Request count and duration by route template (never the raw path), upload bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        path: str = scope.get("path", "")
        upload = path if path.startswith(_UPLOAD_ROUTES) else None
        claim = path == "/worker/claim"
        lanes: list[bytes] = []

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                if upload:
                    UPLOAD_BYTES.labels(upload).inc(len(message.get("body", b"")))
                elif claim and not lanes:
                    found = _LANES_IN_BODY.search(message.get("body", b"")[:4096])
                    lanes.extend(_LANE_NAME.findall(found.group(1)) if found else [b"cpu"])
            return message

        answer: list[bytes] = []

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif claim and status == 200 and message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive if upload or claim else receive, send_status)
        finally:
            if claim and status in (200, 204):  # a long-poll's wait, by the first lane it asked for
                observe_claim_wait([x.decode() for x in lanes], time.perf_counter() - start)
            if answer:
                _observe_first_claims(b"".join(answer))
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "-")
            _counted(method, route, status).inc()
            _timed(method, route).observe(time.perf_counter() - start)


def _observe_first_claims(body: bytes) -> None:
    """Dispatch latency of first attempts, read from a claim's answer.

    A job id starts with its creation time in microseconds (api/ids.py), and a first attempt was
    claimable from its creation on (retries wait for their retry time: they are not counted here).
    """
    try:
        jobs = json.loads(body).get("jobs") or []
    except (ValueError, AttributeError):
        return
    now_us = time.time() * 1e6
    for job in jobs:
        try:
            if job.get("attempt") != 1:
                continue
            created_us = int(str(job["job_id"])[:14], 16)
            kind = lane_kind_for(ContentType(job["content_type"])).value
        except (KeyError, ValueError, TypeError):
            continue
        DISPATCH_SECONDS.labels(kind).observe(max(now_us - created_us, 0.0) / 1e6)


# --- Scrape ---------------------------------------------------------------------------------------


class RecentSpans:
    """Claim-to-result times of the last hour in this process, by content type (a bounded window)."""

    def __init__(self, window_s: float = 3600.0, limit: int = 10_000) -> None:
        self.window_s = window_s
        self._spans: deque[tuple[float, str, float]] = deque(maxlen=limit)

    def add(self, content_type: str, seconds: float) -> None:
        self._spans.append((time.monotonic(), content_type, seconds))

    def means(self) -> dict[str, float]:
        """Mean seconds per content type over the window (older spans are dropped here)."""
        since = time.monotonic() - self.window_s
        while self._spans and self._spans[0][0] < since:
            self._spans.popleft()
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for _, content_type, seconds in self._spans:
            sums[content_type][0] += seconds
            sums[content_type][1] += 1
        return {ct: total / n for ct, (total, n) in sums.items()}


RECENT = RecentSpans()


async def _queue_families(jobs: JobStore) -> list[GaugeMetricFamily]:
    now = utcnow()
    live = GaugeMetricFamily(
        "morag_jobs", "Live jobs (queued, running) by lane kind and state.", labels=["lane", "state"]
    )
    oldest = GaugeMetricFamily(
        "morag_queue_oldest_seconds", "Age of the oldest claimable queued job.", labels=["lane"]
    )
    workers = GaugeMetricFamily(
        "morag_workers_online", "Workers seen within MORAG_PRESENCE_TTL_S, by lane.", labels=["lane"]
    )
    recent = GaugeMetricFamily(
        "morag_processing_seconds_recent",
        "Mean claim-to-result time of jobs finished in the last hour (this process), by content type.",
        labels=["content_type"],
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    oldest_by_lane: dict[str, float] = {}
    for lane in await jobs.count_live_jobs():
        kind = lane_kind(lane.lane)
        counts[(kind, JobState.queued.value)] += lane.queued
        counts[(kind, JobState.running.value)] += lane.running
        if lane.oldest_queued_run_after is not None:
            age = max((now - lane.oldest_queued_run_after).total_seconds(), 0.0)
            oldest_by_lane[kind] = max(oldest_by_lane.get(kind, 0.0), age)
    online = await jobs.count_online_workers()
    for (lane_, state), n in sorted(counts.items()):
        live.add_metric([lane_, state], n)
    for lane_, age in sorted(oldest_by_lane.items()):
        oldest.add_metric([lane_], age)
    workers.add_metric(["gpu"], online.gpu)
    workers.add_metric(["cpu"], online.cpu)
    workers.add_metric(["any"], online.total)
    for content_type, mean in sorted(RECENT.means().items()):
        recent.add_metric([content_type], mean)
    return [live, oldest, workers, recent]


class _Static:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def render(jobs: JobStore, extra: list[GaugeMetricFamily] | None = None) -> bytes:
    """The /metrics text: this process's (or all processes') events + the queue read now."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        events = CollectorRegistry()
        MultiProcessCollector(events)  # type: ignore[no-untyped-call]
        body = generate_latest(events)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    state = CollectorRegistry(auto_describe=False)
    state.register(_Static([*await _queue_families(jobs), *(extra or [])]))
    return body + generate_latest(state)


# --- Job events ---------------------------------------------------------------------------------


class MetricsListener:
    """Counts what job events say (listed with the other listeners in ``api.app``)."""

    def job_changed(self, event: JobEvent) -> None:
        lane = event.lane
        if lane is None:
            return  # an event that does not name its lane counts nowhere
        if event.state is JobState.queued:
            count_retry(lane)
        elif event.state is JobState.dead:
            count_dead(lane)
        elif is_final(event.state):
            count_finished(lane, event.state)
        if event.seconds_since_claim is not None and (
            event.state is JobState.succeeded or event.stage is TaskStage.indexing
        ):
            observe_processing(event.content_type or "unknown", event.seconds_since_claim)
