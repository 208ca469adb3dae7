"""Client API: follow tasks, queue statistics and the caller's workers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from api import jobstore
from api.auth import client_access, principal
from api.errors import documented
from api.keystore import Principal
from api.schemas import QueueStats, TaskList, TaskStatus, WorkerList, task_status

router = APIRouter(prefix="/api/v1", tags=["status"])


@router.get("/status/stats/queues", response_model=QueueStats)
async def queue_stats(request: Request, who: Principal = Depends(client_access)) -> QueueStats:
    """Per lane: jobs by state, the oldest waiting age and the workers online."""
    state = request.app.state.morag
    lanes = await jobstore.queue_stats(state.engine, state.settings, who.user_id)
    return QueueStats.model_validate({"lanes": lanes})


@router.get("/status/{task_id}", response_model=TaskStatus, responses=documented(404))
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


@router.get("/workers", response_model=WorkerList)
async def workers(request: Request, who: Principal = Depends(principal)) -> WorkerList:
    """The caller's workers: lanes, last seen and current jobs."""
    state = request.app.state.morag
    rows = await jobstore.list_workers(state.engine, state.settings, who.user_id)
    return WorkerList.model_validate({"workers": rows})
