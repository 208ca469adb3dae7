"""The indexing stage of ingest jobs: worker result -> chunks -> embeddings -> vector store.

Runs inside the server (workers never reach embedding services or the vector store). A worker's
result is already safe in the job table when indexing starts, so an outage of the embedding
service or of Qdrant only delays the task: it shows "waiting for indexing: <why>" and is retried
with backoff, across server restarts (the due time is a column), until it succeeds or runs out
of ``index_max_attempts``. Errors that cannot heal (dimension mismatch, bad chunk options, a
refused embedding request) fail the task at once with the reason.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from api import filestore
from api.background import BackgroundService, backoff_s
from api.events import JobEvents
from api.ids import utcnow
from api.indexing.config import IndexConfig
from api.indexing.errors import IndexingError
from api.indexing.service import Indexer
from api.jobs import JobEvent, JobKind, JobRecord, JobState, JobStore, TaskStage
from api.logging_setup import task_context
from api.settings import Settings

log = logging.getLogger("morag.indexer")
HOLD_S = 600.0  # a job being indexed is invisible to other server processes this long


def index_user(user_id: int | None) -> str:
    """The user key every vector point carries (anonymous jobs share one)."""
    return "anonymous" if user_id is None else str(user_id)


def index_config(settings: Settings) -> IndexConfig:
    """The indexing library's settings from the server's (one settings object per process)."""
    return IndexConfig(
        chunk_size=settings.chunk_size,
        chunk_overlap=min(settings.chunk_overlap, settings.chunk_size - 1),
        gemini_api_key=settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None,
        gemini_model=settings.gemini_model,
        gemini_dimensions=settings.gemini_dimensions,
        embed_batch_size=settings.embed_batch_size,
        embed_max_retries=settings.embed_max_retries,
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        qdrant_path=None if settings.qdrant_url else str(settings.data_dir / "qdrant"),
        collection=settings.collection,
        distance=settings.distance,  # type: ignore[arg-type]
    )


class IndexingStage(BackgroundService):
    """Finds ingest jobs whose result is in and indexes them, one server process at a time each."""

    name = "indexing"

    def __init__(self, jobs: JobStore, settings: Settings, indexer: Indexer, events: JobEvents) -> None:
        super().__init__(settings.index_interval_s)
        self.idle_s = settings.index_idle_s
        self.next_due: datetime | None = None  # of the next job in indexing, as of the last empty look
        self.jobs = jobs
        self.settings = settings
        self.indexer = indexer
        self.events = events  # indexing ends jobs too: their webhooks go out from here

    def idle_delay(self) -> float:
        """Nothing was due: sleep until the next job in indexing falls due (a retry after an
        outage, the hold of a server process that died), at most ``index_idle_s`` with none, and
        at least ``index_interval_s`` (a due job another process holds). A result stored through
        this process wakes the loop at once (:meth:`job_changed`); one stored through another is
        indexed there. Idle, that is one look every ``index_idle_s`` instead of two a second."""
        if self.next_due is None:
            return self.idle_s
        wait = (self.next_due - utcnow()).total_seconds()
        return min(max(wait, self.interval_s), self.idle_s)

    def job_changed(self, event: JobEvent) -> None:
        """An ingest job's result just came in: look now instead of at the next interval."""
        if event.kind is JobKind.ingest and event.stage is TaskStage.indexing:
            self.wake()

    async def run_once(self, limit: int = 4) -> bool:
        """Index the jobs that are due now; True when some were taken. When none was, note when
        the next one falls due (:meth:`idle_delay`)."""
        jobs = await self.jobs.claim_index_work(limit, HOLD_S)
        if not jobs:
            self.next_due = await self.jobs.next_index_due()
        for job in jobs:
            with task_context(job.id):  # every log line about this job names it
                await self._index(job)
        return bool(jobs)

    async def _index(self, job: JobRecord) -> None:
        opts = job.index_options or {}
        result = job.result or {}
        source = job.source_url
        if source is None and job.file_id:
            stored = await filestore.get_file(self.jobs.engine, job.file_id)
            source = stored["original_name"] if stored else None
        source = source or (result.get("metadata") or {}).get("source")
        try:
            outcome = await self.indexer.index_document(
                user_id=index_user(job.user_id),
                document_id=job.document_id or job.id,
                markdown=result.get("markdown", ""),
                metadata=result.get("metadata") or {},
                user_metadata=opts.get("metadata") or {},
                source=source,
                replace_existing=bool(opts.get("replace_existing", False)),
                chunk_size=opts.get("chunk_size"),
                chunk_overlap=opts.get("chunk_overlap"),
            )
        except Exception as exc:
            await self._failed(job, exc)
            return
        summary = {
            "document_id": outcome.document_id,
            "chunks": outcome.chunk_count,
            "replaced_points": outcome.removed_points,
            "embedding_model": outcome.embedding_model,
            "dimension": outcome.dimension,
            "seconds": round(outcome.seconds, 3),
        }
        message = f"indexed {outcome.chunk_count} chunk{'' if outcome.chunk_count == 1 else 's'}"
        if await self.jobs.finish_indexing(job.id, {**result, "index": summary}, message):
            log.info("indexed job %s: %d chunks", job.id, outcome.chunk_count)
            self.events.publish(_ended(job, JobState.succeeded))

    async def _failed(self, job: JobRecord, exc: Exception) -> None:
        settings = self.settings
        if isinstance(exc, IndexingError):
            reason, retryable = f"{exc.code}: {exc.message}", exc.retryable
        else:
            log.exception("unexpected indexing error for job %s", job.id, exc_info=exc)
            reason, retryable = f"{type(exc).__name__}: {exc}", True
        attempts = job.index_attempts
        if retryable and attempts < settings.index_max_attempts:
            delay = backoff_s(settings.index_retry_base_s, settings.index_retry_max_s, attempts)
            retry_at = utcnow() + timedelta(seconds=delay)
            log.warning("indexing job %s delayed (%s); retry at %s", job.id, reason, retry_at)
            await self.jobs.defer_indexing(job.id, retry_at, reason)
            return
        if retryable:
            reason = f"{reason} (gave up after {attempts} indexing attempts)"
        if await self.jobs.fail_indexing(job.id, reason):
            self.events.publish(_ended(job, JobState.failed))


def _ended(job: JobRecord, state: JobState) -> JobEvent:
    return JobEvent(
        job.id,
        state,
        TaskStage.done,
        JobKind.ingest,
        job.webhook_url is not None,
        lane=job.lane,
        content_type=job.content_type,
    )
