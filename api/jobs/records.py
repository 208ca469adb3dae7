"""What the job store takes and returns: typed records and the job vocabulary (kind, state, stage)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import RowMapping

from protocol.states import FINAL_STATES, JobState, LaneKind, TaskStage

__all__ = [
    "FailOutcome",
    "HeartbeatOutcome",
    "IndexedDocument",
    "JobEvent",
    "JobKind",
    "JobRecord",
    "JobState",
    "LaneCount",
    "LaneLoad",
    "Lease",
    "LeasedJob",
    "ListedJob",
    "LiveLane",
    "NewJob",
    "OnlineWorkers",
    "TaskStage",
    "WorkerRecord",
    "is_final",
]


class JobKind(StrEnum):
    """``process``: the worker's result is the answer; ``ingest``: the server indexes it afterwards."""

    process = "process"
    ingest = "ingest"


def is_final(state: str) -> bool:
    """True for succeeded, failed, canceled and dead."""
    return state in FINAL_STATES


@dataclass
class NewJob:
    """A job to queue (the store adds its lane, fallback times and ids)."""

    content_type: str
    lane_kind: LaneKind
    kind: JobKind = JobKind.process
    file_id: str | None = None
    source_url: str | None = None
    options: dict[str, Any] | None = None
    priority: int = 0
    batch_id: str | None = None
    document_id: str | None = None
    webhook_url: str | None = None
    index_options: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a running job: the job, the lease token and the key presenting it."""

    job_id: str
    token: str
    key_id: str | None


@dataclass(frozen=True, slots=True)
class LeasedJob:
    """One job handed to a worker by a claim."""

    id: str
    lease_token: str
    lease_expires_at: datetime
    attempt: int
    content_type: str
    options: dict[str, Any]
    file_id: str | None
    source_url: str | None
    user_id: int | None
    priority: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of the jobs table."""

    id: str
    user_id: int | None
    lane: str
    content_type: str
    kind: str
    file_id: str | None
    source_url: str | None
    options: dict[str, Any]
    state: str
    stage: str
    priority: int
    attempt: int
    max_attempts: int
    run_after: datetime
    fallback_at: datetime | None
    shared_at: datetime | None
    lease_token: str | None
    lease_expires_at: datetime | None
    claim_id: str | None
    worker_id: str | None
    worker_key_id: str | None
    progress: float
    progress_message: str | None
    result: dict[str, Any] | None
    error: str | None
    error_class: str | None
    batch_id: str | None
    document_id: str | None
    webhook_url: str | None
    index_options: dict[str, Any] | None
    index_attempts: int
    index_next_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> JobRecord:
        return cls(**{name: row[name] for name in _JOB_FIELDS})


_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome:
    lease_expires_at: datetime
    canceled: bool


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job changed state through this process: what listeners need to decide whether they care."""

    job_id: str
    state: JobState
    stage: TaskStage
    kind: JobKind
    has_webhook: bool
    #: for metrics: the job's lane and content type, and seconds since its claim (when known)
    lane: str | None = None
    content_type: str | None = None
    seconds_since_claim: float | None = None
    #: the answer to a repeated call (a retried completion): nothing changed, so no listener hears it
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class FailOutcome:
    state: JobState
    retry_at: datetime | None
    event: JobEvent | None = None


@dataclass(frozen=True, slots=True)
class LaneCount:
    lane: str
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    dead: int
    oldest_queued_age_s: float | None
    workers_online: int


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    name: str | None
    key_id: str
    shared: bool
    lanes: list[str]
    content_types: list[str]
    version: str | None
    device: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    online: bool
    current_jobs: list[str]


@dataclass(frozen=True, slots=True)
class ListedJob:
    """A job in a list of tasks, with the name of its uploaded file (the row of ``files``)."""

    job: JobRecord
    file_name: str | None

    @property
    def source(self) -> str | None:
        """The URL, or the uploaded file's name."""
        return self.job.source_url or self.file_name


@dataclass(frozen=True, slots=True)
class IndexedDocument:
    """A document as its latest succeeded ingest names it."""

    document_id: str
    task_id: str
    content_type: str | None
    source: str | None
    indexed_at: datetime | None


@dataclass(frozen=True, slots=True)
class LaneLoad:
    """One lane with queued or running jobs, whoever owns it (admin view)."""

    lane: str
    user: str | None
    queued: int
    running: int
    oldest_queued_age_s: float | None


@dataclass(frozen=True, slots=True)
class LiveLane:
    """One lane's live jobs, whoever owns it (``/metrics``): ended jobs are not read."""

    lane: str
    queued: int
    running: int
    #: the earliest ``run_after`` of its queued jobs (None when none is queued)
    oldest_queued_run_after: datetime | None


@dataclass(frozen=True, slots=True)
class OnlineWorkers:
    """Workers seen within the presence TTL: how many serve GPU lanes, CPU lanes, and in all."""

    gpu: int
    cpu: int
    total: int
