"""Client API: follow tasks, queue statistics and the caller's workers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse

from api import artifacts
from api.auth import client_access, principal
from api.jobs import JobRecord
from api.keystore import Principal
from api.schemas import ArtifactInfo, QueueStats, TaskList, TaskStatus, WorkerList, task_status
from api.state import AppState, get_state
from protocol.errors import ErrorBody
from protocol.states import JobState

router = APIRouter(prefix="/api/v1", tags=["status"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such task or artifact for this key (`task_not_found`, ...)"}
}


async def _with_artifacts(
    state: AppState, request: Request, rows: list[JobRecord], file_names: dict[str, str | None] | None = None
) -> list[TaskStatus]:
    """Task statuses, each with the artifacts of the lease that completed it."""
    found = await artifacts.list_for_jobs(state.engine, rows)
    base = (state.settings.public_url or str(request.base_url)).rstrip("/")
    out = []
    for row in rows:
        infos = [
            ArtifactInfo(
                name=a["name"],
                size=a["size"],
                mime=a["mime"],
                sha256=a["sha256"],
                url=f"{base}/api/v1/status/{quote(row.id)}/artifacts/{quote(a['name'])}",
            )
            for a in found.get(row.id, [])
        ]
        out.append(task_status(row, infos, (file_names or {}).get(row.id)))
    return out


async def task_page(
    request: Request,
    status: JobState | None = Query(None, description="Only tasks in this state."),
    state: JobState | None = Query(None, deprecated=True, description="Old name of status."),
    cursor: str | None = Query(None, max_length=64, description="next_cursor of the previous page."),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(client_access),
    app_state: AppState = Depends(get_state),
) -> TaskList:
    """One page of the caller's tasks, newest first, with its ``next_cursor``: the listing of both
    ``GET /api/v1/status/`` and ``GET /api/v1/tasks`` (``Depends(task_page)``: one signature)."""
    listed = await app_state.jobs.list_jobs(who.user_id, status or state, cursor, limit)
    rows = [item.job for item in listed]
    names = {item.job.id: item.file_name for item in listed}
    next_cursor = rows[-1].id if len(rows) == limit else None
    return TaskList(tasks=await _with_artifacts(app_state, request, rows, names), next_cursor=next_cursor)


@router.get("/status/stats/queues", response_model=QueueStats)
async def queue_stats(
    who: Principal = Depends(client_access), state: AppState = Depends(get_state)
) -> QueueStats:
    """Per lane: jobs by state, the oldest waiting age and the workers online."""
    lanes = await state.jobs.queue_stats(who.user_id)
    return QueueStats.model_validate({"lanes": [asdict(lane) for lane in lanes]})


@router.get("/status/{task_id}", response_model=TaskStatus, responses=_NOT_FOUND)
async def get_status(
    task_id: str,
    request: Request,
    who: Principal = Depends(client_access),
    state: AppState = Depends(get_state),
) -> TaskStatus:
    """State, progress, attempts, timestamps, result or error, and artifacts of one of the caller's tasks."""
    row = await state.jobs.get(who.user_id, task_id)
    return (await _with_artifacts(state, request, [row]))[0]


@router.get(
    "/status/{task_id}/artifacts/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file"}, **_NOT_FOUND},
)
async def get_artifact(
    task_id: str,
    request: Request,
    name: str = Path(..., max_length=100),
    who: Principal = Depends(client_access),
    state: AppState = Depends(get_state),
) -> FileResponse:
    """Download one artifact (thumbnail, keyframe) of one of the caller's completed tasks."""
    row = await state.jobs.get(who.user_id, task_id)
    art, path = await artifacts.get_artifact(state.engine, state.settings, row, name)
    # Sniffed, not trusted, content: a download, never rendered as a page of this origin.
    return FileResponse(
        path, media_type=art["mime"], filename=name, headers={"X-Content-Type-Options": "nosniff"}
    )


@router.get("/status/", response_model=TaskList)
async def list_status(page: TaskList = Depends(task_page)) -> TaskList:
    """The caller's tasks, newest first, optionally by status; follow ``next_cursor`` for more (a
    malformed cursor is 422 ``invalid_cursor``). ``GET /api/v1/tasks`` is the same list."""
    return page


@router.get("/workers", response_model=WorkerList)
async def workers(who: Principal = Depends(principal), state: AppState = Depends(get_state)) -> WorkerList:
    """The caller's workers: lanes, last seen and current jobs."""
    rows = await state.jobs.list_workers(who.user_id)
    return WorkerList.model_validate({"workers": [asdict(w) for w in rows]})
