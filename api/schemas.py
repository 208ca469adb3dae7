"""Client-facing request and answer bodies (the /api/v1 surface)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.jobs import JobRecord
from protocol.errors import TaskErrorClass
from protocol.inputs import CleanBody
from protocol.states import ContentType, JobState, TaskStage

#: A batch's state: a task state, or ``partial`` (some tasks succeeded, some did not).
BatchState = Literal["queued", "running", "succeeded", "failed", "partial", "canceled"]


class IngestFields(CleanBody):
    """What every ingest request may carry besides its input (file or URL)."""

    model_config = ConfigDict(extra="forbid")

    content_type: ContentType | None = Field(
        default=None, description="Processor to use; detected from the bytes (files) or the host (URLs)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Processor options.")
    lane: Literal["gpu", "cpu"] | None = Field(default=None, description="Default: by content type.")
    priority: int = Field(default=0, ge=-100, le=100)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Stored with every chunk.")
    document_id: str | None = Field(default=None, min_length=1, max_length=200)
    replace_existing: bool = Field(default=False, description="Replace the chunks of the same document_id.")
    webhook_url: str | None = Field(default=None, max_length=2048, description="POSTed on the final state.")
    chunk_size: int | None = Field(default=None, ge=50, le=100_000, description="Characters per chunk.")
    chunk_overlap: int | None = Field(default=None, ge=0, le=50_000, description="Characters of overlap.")

    def index_options(self) -> dict[str, Any]:
        """What the indexer needs, stored in the job's index_options."""
        return {
            "metadata": self.metadata,
            "replace_existing": self.replace_existing,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
        }


class IngestURLRequest(IngestFields):
    url: str = Field(min_length=1, max_length=4096)


class IngestFileForm(IngestFields):
    """The text fields of a multipart ingest upload (``metadata`` and ``options`` as JSON text)."""


class BatchRequest(CleanBody):
    items: list[IngestURLRequest] = Field(min_length=1, description="Each item becomes its own task.")


class BatchCreated(BaseModel):
    batch_id: str
    status: JobState
    task_ids: list[str]


class BatchTask(BaseModel):
    task_id: str
    status: JobState
    stage: TaskStage
    progress: float
    error: str | None


class BatchStatus(BaseModel):
    batch_id: str
    status: BatchState = Field(description="A task state, or partial (some tasks succeeded, some did not).")
    total: int
    counts: dict[str, int]
    progress: float
    tasks: list[BatchTask]


class ProcessURLRequest(CleanBody):
    url: str = Field(min_length=1, max_length=4096)
    content_type: ContentType | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    wait_s: float | None = Field(
        default=None,
        ge=0,
        description="Default MORAG_PROCESS_WAIT_DEFAULT_S; capped at MORAG_PROCESS_WAIT_MAX_S.",
    )


class ProcessFileForm(CleanBody):
    content_type: ContentType | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    wait_s: float | None = Field(default=None, ge=0, description="Capped at MORAG_PROCESS_WAIT_MAX_S.")


class ProcessResult(BaseModel):
    """The outcome of an immediate /process request."""

    success: bool
    content: str | None
    metadata: dict[str, Any]
    processing_time: float | None
    error: str | None = Field(default=None, description="Why it failed (the name status and webhooks use).")
    error_message: str | None = Field(default=None, description="Deprecated: the same as error.")
    error_class: TaskErrorClass | None = None
    task_id: str | None = None


class CookieDomain(BaseModel):
    domain: str
    count: int
    updated_at: datetime


class CookieSharing(BaseModel):
    share_with_shared_workers: bool = Field(
        description="Send your site cookies along when the operator's shared workers run your jobs "
        "(off by default: only your own workers get them)."
    )


class CookieList(BaseModel):
    domains: list[CookieDomain]
    total: int


class TaskCreated(BaseModel):
    task_id: str
    status: JobState


class ArtifactInfo(BaseModel):
    """A binary output of the task (thumbnail, keyframe); ``url`` downloads it with the same key."""

    name: str
    size: int
    mime: str
    sha256: str
    url: str


class TaskStatus(BaseModel):
    task_id: str
    status: JobState
    stage: TaskStage
    progress: float
    message: str | None
    content_type: ContentType
    lane: str
    attempts: int
    max_attempts: int
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    error_class: TaskErrorClass | None
    batch_id: str | None = None
    document_id: str | None = None
    source: str | None = Field(default=None, description="The URL, or the uploaded file's name (in lists).")
    artifacts: list[ArtifactInfo] = Field(
        default_factory=list, description="Files the worker returned besides the text, once it completed."
    )


class TaskList(BaseModel):
    tasks: list[TaskStatus]
    next_cursor: str | None


class LaneStats(BaseModel):
    lane: str
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    dead: int
    oldest_queued_age_s: float | None
    workers_online: int


class QueueStats(BaseModel):
    lanes: list[LaneStats]


class WorkerInfo(BaseModel):
    worker_id: str
    name: str | None
    key_id: str
    shared: bool
    lanes: list[str]
    content_types: list[str]
    version: str | None
    device: str | None = None
    first_seen_at: datetime
    last_seen_at: datetime
    online: bool
    current_jobs: list[str]


class WorkerList(BaseModel):
    workers: list[WorkerInfo]


def task_status(
    row: JobRecord, artifacts: list[ArtifactInfo] | None = None, file_name: str | None = None
) -> TaskStatus:
    """A job row as the client sees it."""
    return TaskStatus(
        artifacts=artifacts or [],
        task_id=row.id,
        status=JobState(row.state),
        stage=TaskStage(row.stage),
        progress=row.progress,
        message=row.progress_message,
        content_type=row.content_type,
        lane=row.lane,
        attempts=row.attempt,
        max_attempts=row.max_attempts,
        worker_id=row.worker_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        result=row.result,
        error=row.error,
        error_class=TaskErrorClass(row.error_class) if row.error_class else None,
        batch_id=row.batch_id,
        document_id=row.document_id,
        source=row.source_url or file_name,
    )
