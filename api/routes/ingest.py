"""Client API: ingest files, URLs and batches (processing, then indexing), and cancel tasks."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import filestore
from api.auth import client_access
from api.bodylimit import check_job
from api.contenttypes import content_type_for_url, resolve_upload_type
from api.errors import BadRequest, MoragError, NotFound, PayloadTooLarge, Unprocessable, documented
from api.ids import new_id
from api.jobs import JobKind, NewJob
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
from api.state import app_state
from protocol.states import ContentType, JobState, TaskStage

router = APIRouter(prefix="/api/v1", tags=["ingest"])
MAX_BATCH_JSON = 10 * 1024 * 1024


def _file_job(
    fields: IngestFileForm, file_id: str, content_type: ContentType, batch_id: str | None = None
) -> NewJob:
    return NewJob(
        content_type=content_type.value,
        lane_kind=lane_kind(fields.lane, content_type),
        kind=JobKind.ingest,
        file_id=file_id,
        options=fields.options,
        priority=fields.priority,
        batch_id=batch_id,
        document_id=fields.document_id,
        webhook_url=fields.webhook_url,
        index_options=fields.index_options(),
    )


def _url_job(item: IngestURLRequest, batch_id: str | None = None) -> NewJob:
    content_type = item.content_type or content_type_for_url(item.url)
    return NewJob(
        content_type=content_type.value,
        lane_kind=lane_kind(item.lane, content_type),
        kind=JobKind.ingest,
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
async def ingest_file(
    request: Request, response: Response, who: Principal = Depends(client_access)
) -> TaskCreated:
    """Upload a file (streamed to disk) and queue it for processing and indexing."""
    state = app_state(request)
    async with uploaded(request, who.user_id) as form:
        fields = form_model(IngestFileForm, form.fields)
        if not form.files:
            raise BadRequest("the multipart field 'file' is missing", code="missing_file")
        _, row, head = form.files[0]
        content_type = resolve_upload_type(fields.content_type, row["mime_type"], head)
        await check_webhook(state.settings, fields.webhook_url)
        job = check_job(state.settings, _file_job(fields, row["id"], content_type))
        await filestore.insert_files(state.engine, state.settings, [row])
        job_id = await state.jobs.enqueue(who, job)
    return _queued(response, job_id)


@router.post("/ingest/url", response_model=TaskCreated, status_code=202, responses=ERRORS)
async def ingest_url(
    body: IngestURLRequest, request: Request, response: Response, who: Principal = Depends(client_access)
) -> TaskCreated:
    """Queue a URL (web page, YouTube or other media) for processing and indexing."""
    state = app_state(request)
    check_source_url(body.url)
    await check_webhook(state.settings, body.webhook_url)
    job_id = await state.jobs.enqueue(who, check_job(state.settings, _url_job(body)))
    return _queued(response, job_id)


def _queued(response: Response, job_id: str) -> TaskCreated:
    """202 with ``Location`` (the status URL). A task no online worker can take says so in its status
    message from the start (the store sets it in the enqueue transaction)."""
    response.headers["Location"] = f"/api/v1/status/{job_id}"
    return TaskCreated(task_id=job_id, status=JobState.queued.value)


def _batch_body() -> dict[str, Any]:
    schema = BatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    extra = file_request_body(IngestFileForm, many=True)
    extra["requestBody"]["content"]["application/json"] = {"schema": schema}
    return extra


async def _json_batch(request: Request) -> BatchRequest:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BATCH_JSON:
            raise PayloadTooLarge("the batch body is larger than 10 MiB", code="batch_too_large")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise Unprocessable(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    try:
        return BatchRequest.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from exc


@router.post(
    "/ingest/batch",
    response_model=BatchCreated,
    status_code=202,
    responses=ERRORS,
    openapi_extra=_batch_body(),
)
async def ingest_batch(
    request: Request, response: Response, who: Principal = Depends(client_access)
) -> BatchCreated:
    """Queue up to 100 items at once (JSON URL items, or files in one multipart body): a task each."""
    created = await _ingest_batch(request, who)
    response.headers["Location"] = f"/api/v1/ingest/batch/{created.batch_id}"
    return created


async def _ingest_batch(request: Request, who: Principal) -> BatchCreated:
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        return await _file_batch(request, who)
    state = app_state(request)
    body = await _json_batch(request)
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
    jobs = [check_job(state.settings, _url_job(i, batch_id)) for i in body.items]
    ids = await state.jobs.enqueue_many(who, jobs)
    return BatchCreated(batch_id=batch_id, status=JobState.queued.value, task_ids=ids)


async def _file_batch(request: Request, who: Principal) -> BatchCreated:
    """Files of one multipart body (field ``files``, repeated), sharing the other fields."""
    state = app_state(request)
    async with uploaded(request, who.user_id, max_files=state.settings.batch_max_items) as form:
        fields = form_model(IngestFileForm, form.fields)
        if not form.files:
            raise BadRequest("the multipart field 'files' is missing", code="missing_file")
        if fields.document_id and len(form.files) > 1:
            raise BadRequest("document_id names one document; send it with one file", code="invalid_field")
        await check_webhook(state.settings, fields.webhook_url)
        batch_id = new_id()
        jobs = []
        for n, (_, row, head) in enumerate(form.files):
            try:
                content_type = resolve_upload_type(fields.content_type, row["mime_type"], head)
            except MoragError as exc:
                raise type(exc)(f"files[{n}] ({row['original_name']}): {exc.message}", code=exc.code) from exc
            jobs.append(check_job(state.settings, _file_job(fields, row["id"], content_type, batch_id)))
        await filestore.insert_files(state.engine, state.settings, [row for _, row, _ in form.files])
        ids = await state.jobs.enqueue_many(who, jobs)
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


@router.get("/ingest/batch/{batch_id}", response_model=BatchStatus, responses=documented(404))
async def batch_status(
    batch_id: str, request: Request, who: Principal = Depends(client_access)
) -> BatchStatus:
    """Aggregate status of a batch: counts by state, overall progress and each task."""
    rows = await app_state(request).jobs.list_batch(who.user_id, batch_id)
    if not rows:
        raise NotFound("no such batch", code="batch_not_found")
    counts = {s.value: 0 for s in JobState}
    for r in rows:
        counts[r.state] += 1
    tasks = [
        BatchTask(
            task_id=r.id,
            status=JobState(r.state),
            stage=TaskStage(r.stage),
            progress=r.progress,
            error=r.error,
        )
        for r in rows
    ]
    return BatchStatus(
        batch_id=batch_id,
        status=_aggregate([r.state for r in rows]),
        total=len(rows),
        counts=counts,
        progress=round(sum(t.progress for t in tasks) / len(tasks), 4),
        tasks=tasks,
    )


@router.delete("/ingest/{task_id}", response_model=TaskCreated, responses=documented(404, 409))
async def cancel(task_id: str, request: Request, who: Principal = Depends(client_access)) -> TaskCreated:
    """Cancel a task: a queued one never runs; a running one is told at its next heartbeat."""
    state = app_state(request)
    event = await state.jobs.cancel(who.user_id, task_id)
    state.events.publish(event)
    return TaskCreated(task_id=task_id, status=event.state)
