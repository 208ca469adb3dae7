"""What the server answers, as typed models. Unknown fields are kept (``extra="allow"``), so a newer
server never breaks an older client."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINAL_STATES = frozenset({"succeeded", "failed", "canceled", "dead"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class TaskCreated(_Model):
    task_id: str
    status: str


class BatchCreated(_Model):
    batch_id: str
    status: str
    task_ids: list[str]


class BatchTask(_Model):
    task_id: str
    status: str
    stage: str
    progress: float
    error: str | None = None


class BatchStatus(_Model):
    batch_id: str
    status: str
    total: int
    counts: dict[str, int]
    progress: float
    tasks: list[BatchTask]


class Artifact(_Model):
    name: str
    size: int
    mime: str
    sha256: str
    url: str


class Task(_Model):
    """One task's status: state, progress, result or error."""

    task_id: str
    status: str
    stage: str = ""
    progress: float = 0.0
    message: str | None = None
    content_type: str = ""
    lane: str = ""
    attempts: int = 0
    max_attempts: int = 0
    worker_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_class: str | None = None
    batch_id: str | None = None
    document_id: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def markdown(self) -> str | None:
        """The processed text, once the task succeeded."""
        md = (self.result or {}).get("markdown")
        return md if isinstance(md, str) else None


class TaskList(_Model):
    tasks: list[Task]
    next_cursor: str | None = None


class ProcessResult(_Model):
    success: bool
    content: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    processing_time: float | None = None
    error_message: str | None = None
    task_id: str | None = None


class LaneStats(_Model):
    lane: str
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    dead: int = 0
    oldest_queued_age_s: float | None = None
    workers_online: int = 0


class QueueStats(_Model):
    lanes: list[LaneStats]


class Worker(_Model):
    worker_id: str
    name: str | None = None
    key_id: str = ""
    shared: bool = False
    lanes: list[str] = Field(default_factory=list)
    content_types: list[str] = Field(default_factory=list)
    version: str | None = None
    device: str | None = None
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    online: bool = False
    current_jobs: list[str] = Field(default_factory=list)


class WorkerList(_Model):
    workers: list[Worker]


class SearchHit(_Model):
    text: str
    score: float
    document_id: str
    chunk_index: int
    source: str | None = None
    location: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(_Model):
    query: str
    results: list[SearchHit]


class Document(_Model):
    document_id: str
    chunks: int
    source: str | None = None
    task_id: str | None = None
    content_type: str | None = None
    indexed_at: datetime | None = None


class DocumentList(_Model):
    documents: list[Document]


class DocumentDeleted(_Model):
    document_id: str
    removed_points: int


class CookieDomain(_Model):
    domain: str
    count: int
    updated_at: datetime | None = None


class CookieList(_Model):
    domains: list[CookieDomain]
    total: int


class WebhookDelivery(_Model):
    attempt: int
    status_code: int | None = None
    error: str | None = None
    delivered: bool
    at: datetime


class WebhookDeliveries(_Model):
    task_id: str
    webhook_url: str | None = None
    deliveries: list[WebhookDelivery]


class PruneResult(_Model):
    deleted: int
