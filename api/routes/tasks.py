"""Client API: ingest files and URLs, follow and cancel tasks, queue statistics, workers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile

from api import filestore, jobstore
from api.auth import client_access, principal
from api.errors import BadRequest
from api.jobstore import NewJob
from api.keystore import Principal
from api.schemas import IngestURLRequest, QueueStats, TaskCreated, TaskList, TaskStatus, WorkerList, task_status
from protocol.states import ContentType, LaneKind, lane_kind_for
from protocol.urlguard import UnsafeURL, check_scheme

router = APIRouter(prefix="/api/v1", tags=["tasks"])


def _json_field(raw: str | None, name: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{name} is not valid JSON: {exc.msg}", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be a JSON object", code="invalid_json")
    return value


def _lane(lane: str | None, content_type: ContentType) -> LaneKind:
    if lane is None:
        return lane_kind_for(content_type)
    try:
        return LaneKind(lane)
    except ValueError as exc:
        raise BadRequest("lane must be 'gpu' or 'cpu'", code="invalid_lane") from exc


async def _chunks(upload: UploadFile, size: int) -> Any:
    while chunk := await upload.read(size):
        yield chunk


@router.post("/ingest/file", response_model=TaskCreated, status_code=202)
async def ingest_file(
    request: Request,
    file: UploadFile = File(...),
    content_type: ContentType = Form(...),
    options: str | None = Form(None),
    lane: str | None = Form(None),
    priority: int = Form(0, ge=-100, le=100),
    who: Principal = Depends(client_access),
) -> TaskCreated:
    """Upload a file and queue it for processing and indexing."""
    state = request.app.state.morag
    opts = _json_field(options, "options")
    kind = _lane(lane, content_type)
    stored = await filestore.save_stream(
        state.engine, state.settings, who.user_id, _chunks(file, state.settings.upload_chunk_bytes), file.filename
    )
    try:
        job_id = await jobstore.enqueue_job(
            state.engine, state.notifier, state.settings, who,
            NewJob(content_type=content_type.value, lane_kind=kind, kind="ingest", file_id=stored["id"],
                   options=opts, priority=priority),
        )
    except BaseException:
        await filestore.discard_file(state.engine, state.settings, stored["id"])
        raise
    return TaskCreated(task_id=job_id, status="queued")


@router.post("/ingest/url", response_model=TaskCreated, status_code=202)
async def ingest_url(
    body: IngestURLRequest, request: Request, who: Principal = Depends(client_access)
) -> TaskCreated:
    """Queue a URL (web page, YouTube or other media) for processing and indexing."""
    state = request.app.state.morag
    try:
        check_scheme(body.url)
    except UnsafeURL as exc:
        raise BadRequest(str(exc), code=exc.code) from exc
    content_type = body.content_type or ContentType.web
    job_id = await jobstore.enqueue_job(
        state.engine, state.notifier, state.settings, who,
        NewJob(content_type=content_type.value, lane_kind=_lane(body.lane, content_type), kind="ingest",
               source_url=body.url, options=body.options, priority=body.priority,
               document_id=body.document_id, webhook_url=body.webhook_url),
    )
    return TaskCreated(task_id=job_id, status="queued")


@router.get("/status/stats/queues", response_model=QueueStats)
async def queue_stats(request: Request, who: Principal = Depends(client_access)) -> QueueStats:
    """Per lane: jobs by state, the oldest waiting age and the workers online."""
    state = request.app.state.morag
    lanes = await jobstore.queue_stats(state.engine, state.settings, who.user_id)
    return QueueStats.model_validate({"lanes": lanes})


@router.get("/status/{task_id}", response_model=TaskStatus)
async def get_status(task_id: str, request: Request, who: Principal = Depends(client_access)) -> TaskStatus:
    """State, progress, attempts, timestamps and result or error of one of the caller's tasks."""
    row = await jobstore.get_job(request.app.state.morag.engine, who.user_id, task_id)
    return task_status(row)


@router.get("/status/", response_model=TaskList)
async def list_status(
    request: Request,
    state: str | None = Query(None, pattern="^(queued|running|succeeded|failed|canceled|dead)$"),
    cursor: str | None = Query(None, max_length=64),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(client_access),
) -> TaskList:
    """The caller's tasks, newest first, optionally by state; follow ``next_cursor`` for more."""
    rows = await jobstore.list_jobs(request.app.state.morag.engine, who.user_id, state, cursor, limit)
    next_cursor = rows[-1]["id"] if len(rows) == limit else None
    return TaskList(tasks=[task_status(r) for r in rows], next_cursor=next_cursor)


@router.delete("/ingest/{task_id}", response_model=TaskCreated)
async def cancel(task_id: str, request: Request, who: Principal = Depends(client_access)) -> TaskCreated:
    """Cancel a task: a queued one never runs; a running one is told at its next heartbeat."""
    state = request.app.state.morag
    status = await jobstore.cancel_job(state.engine, who.user_id, task_id)
    await state.on_job_changed(task_id)
    return TaskCreated(task_id=task_id, status=status)


@router.get("/workers", response_model=WorkerList)
async def workers(request: Request, who: Principal = Depends(principal)) -> WorkerList:
    """The caller's workers: lanes, last seen and current jobs."""
    state = request.app.state.morag
    rows = await jobstore.list_workers(state.engine, state.settings, who.user_id)
    return WorkerList.model_validate({"workers": rows})
