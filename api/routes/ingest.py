"""Client API: ingest files, URLs and batches (processing, then indexing), and cancel tasks."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api import filestore, jobstore
from api.auth import client_access
from api.contenttypes import content_type_for_url, resolve_upload_type
from api.errors import BadRequest, NotFound, PayloadTooLarge
from api.ids import new_id
from api.jobstore import NewJob
from api.keystore import Principal
from api.routes.forms import (
    ERRORS,
    check_source_url,
    check_webhook,
    file_request_body,
    form_model,
    lane_kind,
    uploaded,
)
from api.schemas import (
    BatchCreated,
    BatchRequest,
    BatchStatus,
    BatchTask,
    IngestFileForm,
    IngestURLRequest,
    TaskCreated,
)
from protocol.states import JobState

router = APIRouter(prefix="/api/v1", tags=["ingest"])


def _url_job(item: IngestURLRequest, batch_id: str | None = None) -> NewJob:
    content_type = item.content_type or content_type_for_url(item.url)
    return NewJob(
        content_type=content_type.value,
        lane_kind=lane_kind(item.lane, content_type),
        kind="ingest",
        source_url=item.url,
        options=item.options,
        priority=item.priority,
        batch_id=batch_id,
        document_id=item.document_id,
        webhook_url=item.webhook_url,
        index_options=item.index_options(),
    )


@router.post(
    "/ingest/file",
    response_model=TaskCreated,
    status_code=202,
    responses=ERRORS,
    openapi_extra=file_request_body(IngestFileForm),
)
async def ingest_file(request: Request, who: Principal = Depends(client_access)) -> TaskCreated:
    """Upload a file (streamed to disk) and queue it for processing and indexing."""
    state = request.app.state.morag
    async with uploaded(request, who.user_id) as form:
        fields = form_model(IngestFileForm, form.fields)
        if not form.files:
            raise BadRequest("the multipart field 'file' is missing", code="missing_file")
        _, row, head = form.files[0]
        content_type = resolve_upload_type(fields.content_type, row["mime_type"], head)
        await check_webhook(state.settings, fields.webhook_url)
        await filestore.insert_files(state.engine, state.settings, [row])
        job_id = await jobstore.enqueue_job(
            state.engine,
            state.notifier,
            state.settings,
            who,
            NewJob(
                content_type=content_type.value,
                lane_kind=lane_kind(fields.lane, content_type),
                kind="ingest",
                file_id=row["id"],
                options=fields.options,
                priority=fields.priority,
                document_id=fields.document_id,
                webhook_url=fields.webhook_url,
                index_options=fields.index_options(),
            ),
        )
    return TaskCreated(task_id=job_id, status=JobState.queued.value)


@router.post("/ingest/url", response_model=TaskCreated, status_code=202, responses=ERRORS)
async def ingest_url(
    body: IngestURLRequest, request: Request, who: Principal = Depends(client_access)
) -> TaskCreated:
    """Queue a URL (web page, YouTube or other media) for processing and indexing."""
    state = request.app.state.morag
    check_source_url(body.url)
    await check_webhook(state.settings, body.webhook_url)
    job_id = await jobstore.enqueue_job(state.engine, state.notifier, state.settings, who, _url_job(body))
    return TaskCreated(task_id=job_id, status=JobState.queued.value)


@router.post("/ingest/batch", response_model=BatchCreated, status_code=202, responses=ERRORS)
async def ingest_batch(
    body: BatchRequest, request: Request, who: Principal = Depends(client_access)
) -> BatchCreated:
    """Queue up to 100 URLs at once; each becomes its own task, all share a batch id."""
    state = request.app.state.morag
    limit = state.settings.batch_max_items
    if len(body.items) > limit:
        raise PayloadTooLarge(
            f"a batch holds at most {limit} items, not {len(body.items)}", code="batch_too_large"
        )
    for n, item in enumerate(body.items):
        try:
            check_source_url(item.url)
            await check_webhook(state.settings, item.webhook_url)
        except BadRequest as exc:
            raise BadRequest(f"items[{n}]: {exc.message}", code=exc.code) from exc
    batch_id = new_id()
    ids = await jobstore.enqueue_jobs(
        state.engine, state.notifier, state.settings, who, [_url_job(i, batch_id) for i in body.items]
    )
    return BatchCreated(batch_id=batch_id, status=JobState.queued.value, task_ids=ids)


def _aggregate(states: list[str]) -> str:
    if all(s == JobState.queued for s in states):
        return JobState.queued.value
    if any(s in (JobState.queued, JobState.running) for s in states):
        return JobState.running.value
    ended = set(states)
    if ended == {JobState.succeeded}:
        return JobState.succeeded.value
    if JobState.succeeded in ended:
        return "partial"
    if ended == {JobState.canceled}:
        return JobState.canceled.value
    return JobState.failed.value


@router.get("/ingest/batch/{batch_id}", response_model=BatchStatus)
async def batch_status(
    batch_id: str, request: Request, who: Principal = Depends(client_access)
) -> BatchStatus:
    """Aggregate status of a batch: counts by state, overall progress and each task."""
    rows = await jobstore.list_batch_jobs(request.app.state.morag.engine, who.user_id, batch_id)
    if not rows:
        raise NotFound("no such batch", code="batch_not_found")
    counts = {s.value: 0 for s in JobState}
    for r in rows:
        counts[r["state"]] += 1
    tasks = [
        BatchTask(
            task_id=r["id"], status=r["state"], stage=r["stage"], progress=r["progress"], error=r["error"]
        )
        for r in rows
    ]
    return BatchStatus(
        batch_id=batch_id,
        status=_aggregate([r["state"] for r in rows]),
        total=len(rows),
        counts=counts,
        progress=round(sum(t.progress for t in tasks) / len(tasks), 4),
        tasks=tasks,
    )


@router.delete("/ingest/{task_id}", response_model=TaskCreated)
async def cancel(task_id: str, request: Request, who: Principal = Depends(client_access)) -> TaskCreated:
    """Cancel a task: a queued one never runs; a running one is told at its next heartbeat."""
    state = request.app.state.morag
    status = await jobstore.cancel_job(state.engine, who.user_id, task_id)
    await state.on_job_changed(task_id)
    return TaskCreated(task_id=task_id, status=status)
