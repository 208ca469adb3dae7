"""Immediate processing without storage: the request waits for the worker's result."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import filestore
from api.auth import client_access
from api.bodylimit import check_job
from api.contenttypes import content_type_for_url, resolve_upload_type
from api.errors import BadRequest
from api.jobs import JobRecord, NewJob, is_final
from api.keystore import Principal
from api.routes.forms import (
    ERRORS,
    check_source_url,
    file_request_body,
    form_model,
    lane_kind,
    uploaded,
    wait_seconds,
)
from api.schemas import ProcessFileForm, ProcessResult, ProcessURLRequest, TaskCreated
from api.state import app_state
from protocol.errors import TaskErrorClass
from protocol.states import JobState

router = APIRouter(prefix="/process", tags=["process"])
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": TaskCreated, "description": "Still running after wait_s: follow the task"},
    **ERRORS,
}
_WAIT = Query(
    None,
    ge=0,
    description="Seconds to wait for the result (default MORAG_PROCESS_WAIT_DEFAULT_S, "
    "at most MORAG_PROCESS_WAIT_MAX_S).",
)


def _result(row: JobRecord) -> ProcessResult:
    result = row.result or {}
    took = None
    if row.started_at and row.finished_at:
        took = round((row.finished_at - row.started_at).total_seconds(), 3)
    ok = row.state == JobState.succeeded
    error = None if ok else (row.error or f"the task ended {row.state}")
    return ProcessResult(
        success=ok,
        content=result.get("markdown") if ok else None,
        metadata=result.get("metadata") or {},
        processing_time=took,
        error=error,
        error_message=error,
        error_class=TaskErrorClass(row.error_class) if not ok and row.error_class else None,
        task_id=row.id,
    )


async def _enqueue(request: Request, who: Principal, job: NewJob) -> str:
    state = app_state(request)
    return await state.jobs.enqueue(who, check_job(state.settings, job))


async def _answer(request: Request, who: Principal, job_id: str, wait_s: float) -> Any:
    status = JobState.queued  # just inserted: with no wait there is nothing to read back
    if wait_s > 0:
        row = await app_state(request).jobs.wait_for_final(who.user_id, job_id, wait_s)
        if is_final(row.state):
            return _result(row)
        status = JobState(row.state)
    body = TaskCreated(task_id=job_id, status=status)
    return JSONResponse(
        status_code=202, content=body.model_dump(), headers={"Location": f"/api/v1/status/{job_id}"}
    )


@router.post(
    "/file",
    response_model=ProcessResult,
    responses=_RESPONSES,
    openapi_extra=file_request_body(ProcessFileForm),
)
async def process_file(
    request: Request, wait_s: float | None = _WAIT, who: Principal = Depends(client_access)
) -> Any:
    """Process an uploaded file now and answer with its content (202 with a task id if it takes longer)."""
    state = app_state(request)
    async with uploaded(request, who.user_id) as form:
        fields = form_model(ProcessFileForm, form.fields)
        wait = wait_seconds(state.settings, wait_s, fields.wait_s)  # refused before anything is queued
        if not form.files:
            raise BadRequest("the multipart field 'file' is missing", code="missing_file")
        _, row, head = form.files[0]
        content_type = resolve_upload_type(fields.content_type, row["mime_type"], head)
        await filestore.insert_files(state.engine, state.settings, [row])
        job_id = await _enqueue(
            request,
            who,
            NewJob(
                content_type=content_type.value,
                lane_kind=lane_kind(None, content_type),
                file_id=row["id"],
                options=fields.options,
            ),
        )
    return await _answer(request, who, job_id, wait)


@router.post("/url", response_model=ProcessResult, responses=_RESPONSES)
async def process_url(
    body: ProcessURLRequest,
    request: Request,
    wait_s: float | None = _WAIT,
    who: Principal = Depends(client_access),
) -> Any:
    """Process a URL now and answer with its content (202 with a task id if it takes longer)."""
    state = app_state(request)
    check_source_url(body.url)
    wait = wait_seconds(state.settings, wait_s, body.wait_s)
    content_type = body.content_type or content_type_for_url(body.url)
    job = NewJob(
        content_type=content_type.value,
        lane_kind=lane_kind(None, content_type),
        source_url=body.url,
        options=body.options,
    )
    job_id = await _enqueue(request, who, job)
    return await _answer(request, who, job_id, wait)
