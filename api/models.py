"""SQLModel tables. Alembic migrations (alembic/versions) create them; a test keeps both equal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Dialect, Index, false, text
from sqlalchemy import DateTime as SADateTime
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class DateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = SADateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(DateTime(), nullable=nullable, index=index))


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    # A GPU-lane job may fall back to this user's CPU workers / to shared (operator) workers.
    cpu_fallback: bool = Field(default=True)
    shared_fallback: bool = Field(default=True)
    # The user's site cookies go along with jobs that shared (operator) workers run: opt-in.
    share_cookies: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    user_id: int = Field(foreign_key="users.id", index=True)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    scope: str = Field(max_length=20)
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    revoked_at: datetime | None = _ts()
    last_used_at: datetime | None = _ts()


class StoredFile(SQLModel, table=True):
    __tablename__ = "files"

    id: str = Field(primary_key=True, max_length=32)
    user_id: int | None = Field(default=None, index=True)
    path: str = Field(max_length=500)
    size: int
    sha256: str = Field(max_length=64)
    mime_type: str | None = Field(default=None, max_length=200)
    original_name: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    delete_after: datetime | None = _ts(index=True)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        # Shaped like the claim: state filter in the predicate, lane + order in the key.
        Index(
            "ix_jobs_claim_lane",
            "lane",
            text("priority DESC"),
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        Index(
            "ix_jobs_claim_fallback",
            "fallback_at",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        # The CPU fallback of a GPU lane: due rows of one lane, oldest due first (api/jobs/claim_pg.py).
        Index(
            "ix_jobs_claim_fallback_lane",
            "lane",
            "fallback_at",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        # The shared fallback, per user: that user's due rows, oldest due first. The only index on
        # shared_at: with one by shared_at alone, the planner walked every due row of every user to
        # probe one user's (api/jobs/claim_pg.py); the fallback sweep walks this one per user too.
        Index(
            "ix_jobs_claim_shared_user",
            "user_id",
            "shared_at",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("state = 'running'"),
            sqlite_where=text("state = 'running'"),
        ),
        # The shared lane's fair share: how many jobs a user has running (api/jobs/claim_pg.py).
        Index(
            "ix_jobs_running_user",
            "user_id",
            postgresql_where=text("state = 'running'"),
            sqlite_where=text("state = 'running'"),
        ),
        Index("ix_jobs_user_created", "user_id", "id"),
        # The jobs of a file (the file-retention sweep asks for each file not scheduled yet).
        Index(
            "ix_jobs_file",
            "file_id",
            postgresql_where=text("file_id IS NOT NULL"),
            sqlite_where=text("file_id IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)  # time-ordered: FIFO by id
    user_id: int | None = Field(default=None)
    lane: str = Field(max_length=64)
    content_type: str = Field(max_length=32)
    kind: str = Field(default="process", max_length=16)  # process | ingest
    file_id: str | None = Field(default=None, max_length=32)
    source_url: str | None = Field(default=None, max_length=4096)
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(max_length=16)
    stage: str = Field(default="process", max_length=16)  # process | index | done
    priority: int = Field(default=0)
    attempt: int = Field(default=0)
    max_attempts: int = Field(default=3)
    run_after: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    fallback_at: datetime | None = _ts()
    shared_at: datetime | None = _ts()
    lease_token: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = _ts()
    claim_id: str | None = Field(default=None, max_length=160, index=True)
    worker_id: str | None = Field(default=None, max_length=128)
    worker_key_id: str | None = Field(default=None, max_length=32)
    progress: float = Field(default=0.0)
    progress_message: str | None = Field(default=None, max_length=500)
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = Field(default=None)
    error_class: str | None = Field(default=None, max_length=32)
    batch_id: str | None = Field(default=None, max_length=32, index=True)
    document_id: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2048)
    index_options: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    index_attempts: int = Field(default=0)
    index_next_at: datetime | None = _ts()
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    key_id: str = Field(primary_key=True, max_length=32)
    worker_id: str = Field(primary_key=True, max_length=128)
    user_id: int = Field(index=True)
    shared: bool = Field(default=False)
    serves_gpu: bool = Field(default=False)
    serves_cpu: bool = Field(default=False)
    content_types: str = Field(default="", max_length=500)
    name: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=50)
    device: str | None = Field(default=None, max_length=200)
    first_seen_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    last_seen_at: datetime = Field(sa_column=Column(DateTime(), nullable=False, index=True))


class WebhookDelivery(SQLModel, table=True):
    """One attempt to POST a job's final state to its webhook_url."""

    __tablename__ = "webhook_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=32, index=True)
    attempt: int
    status_code: int | None = Field(default=None)
    error: str | None = Field(default=None, max_length=1000)
    delivered: bool = Field(default=False)
    at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class UserCookie(SQLModel, table=True):
    """A user's cookies for one domain (Netscape lines), encrypted with the server secret."""

    __tablename__ = "user_cookies"

    user_id: int = Field(primary_key=True)
    domain: str = Field(primary_key=True, max_length=255)
    count: int
    data: bytes
    updated_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class Artifact(SQLModel, table=True):
    """A binary output of a job (thumbnail, keyframe) uploaded by the worker holding its lease."""

    __tablename__ = "artifacts"

    job_id: str = Field(primary_key=True, max_length=32)
    name: str = Field(primary_key=True, max_length=100)
    # The lease it was uploaded under: only the lease that completed the job shows its artifacts.
    lease_token: str = Field(max_length=64)
    size: int
    sha256: str = Field(max_length=64)
    mime: str = Field(max_length=200)
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
