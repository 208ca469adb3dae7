"""The indexing stage of ingest jobs: worker result -> chunks -> embeddings -> vector store.

Runs inside the server (workers never reach embedding services or the vector store). A worker's
result is already safe in the job table when indexing starts, so an outage of the embedding
service or of Qdrant only delays the task: it shows "waiting for indexing: <why>" and is retried
with backoff, across server restarts (the due time is a column), until it succeeds or runs out
of ``index_max_attempts``. Errors that cannot heal (dimension mismatch, bad chunk options, a
refused embedding request) fail the task at once with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import timedelta
from typing import Any

from api import filestore, jobstore
from api.ids import utcnow
from api.indexing.config import IndexConfig
from api.indexing.errors import IndexingError
from api.indexing.service import Indexer
from api.settings import Settings
from api.state import AppState

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
        gemini_api_key=settings.gemini_api_key,
        gemini_model=settings.gemini_model,
        gemini_dimensions=settings.gemini_dimensions,
        embed_batch_size=settings.embed_batch_size,
        embed_max_retries=settings.embed_max_retries,
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=settings.qdrant_api_key,
        qdrant_path=None if settings.qdrant_url else str(settings.data_dir / "qdrant"),
        collection=settings.collection,
        distance=settings.distance,  # type: ignore[arg-type]
    )


class IndexingLoop:
    """Finds ingest jobs whose result is in and indexes them, one server process at a time each."""

    def __init__(self, state: AppState, indexer: Indexer) -> None:
        self.state = state
        self.indexer = indexer
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def poke(self) -> None:
        """A result just came in: look now instead of at the next interval."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                while await self.run_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end indexing for good
                log.exception("indexing pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.state.settings.index_interval_s)
            self._wake.clear()

    async def run_once(self, limit: int = 4) -> int:
        """Index the jobs that are due now; returns how many were taken."""
        jobs = await jobstore.claim_index_work(self.state.engine, limit, HOLD_S)
        for job in jobs:
            await self._index(job)
        return len(jobs)

    async def _index(self, job: dict[str, Any]) -> None:
        opts = job["index_options"] or {}
        result = job["result"] or {}
        source = job["source_url"]
        if source is None and job["file_id"]:
            stored = await filestore.get_file(self.state.engine, job["file_id"])
            source = stored["original_name"] if stored else None
        source = source or (result.get("metadata") or {}).get("source")
        try:
            outcome = await self.indexer.index_document(
                user_id=index_user(job["user_id"]),
                document_id=job["document_id"] or job["id"],
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
        done = await jobstore.finish_indexing(
            self.state.engine,
            job["id"],
            {**result, "index": summary},
            f"indexed {outcome.chunk_count} chunk{'' if outcome.chunk_count == 1 else 's'}",
        )
        if done:
            log.info("indexed job %s: %d chunks", job["id"], outcome.chunk_count)
            await self.state.on_job_changed(job["id"])

    async def _failed(self, job: dict[str, Any], exc: Exception) -> None:
        settings = self.state.settings
        if isinstance(exc, IndexingError):
            reason, retryable = f"{exc.code}: {exc.message}", exc.retryable
        else:
            log.exception("unexpected indexing error for job %s", job["id"], exc_info=exc)
            reason, retryable = f"{type(exc).__name__}: {exc}", True
        attempts = int(job["index_attempts"])
        if retryable and attempts < settings.index_max_attempts:
            step = min(settings.index_retry_max_s, settings.index_retry_base_s * 2 ** (attempts - 1))
            retry_at = utcnow() + timedelta(seconds=step * (0.5 + random.random()))
            log.warning("indexing job %s delayed (%s); retry at %s", job["id"], reason, retry_at)
            await jobstore.defer_indexing(self.state.engine, job["id"], retry_at, reason)
            return
        if retryable:
            reason = f"{reason} (gave up after {attempts} indexing attempts)"
        if await jobstore.fail_indexing(self.state.engine, job["id"], reason):
            await self.state.on_job_changed(job["id"])


async def start_indexing(app: Any, state: AppState) -> None:
    """Startup hook: build the indexer (models load lazily) and start the loop."""
    indexer = Indexer(index_config(state.settings))
    loop = IndexingLoop(state, indexer)
    app.state.indexer = indexer
    app.state.indexing_loop = loop
    previous = state.on_job_changed

    async def on_changed(job_id: str) -> None:
        loop.poke()
        await previous(job_id)

    state.on_job_changed = on_changed
    loop.start()


async def stop_indexing(app: Any, state: AppState) -> None:
    await app.state.indexing_loop.stop()
    await app.state.indexer.close()
