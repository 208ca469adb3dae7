"""Client API: manage tasks (list with ``?status=``, retry, webhook log, prune), list indexed
documents, and the admin overview of every lane and shared worker."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import client_access, require
from api.errors import Forbidden, documented
from api.ids import utcnow
from api.indexing.errors import IndexingError
from api.indexing.stage import index_user
from api.jobs import LaneCount
from api.keystore import Principal, Scope
from api.routes.search import _translate
from api.routes.status import task_page
from api.schemas import TaskCreated, TaskList, WorkerList
from api.settings import Settings
from api.state import AppState, get_state
from protocol.inputs import CleanBody
from protocol.states import JobState

# Like every client route (api/routes/tasks.py): no key, a worker's key, too large, bad input, rate.
router = APIRouter(prefix="/api/v1", responses=documented(401, 403, 413, 422, 429))
admin_access = require(Scope.admin)


class WebhookAttempt(BaseModel):
    attempt: int
    status_code: int | None
    error: str | None
    delivered: bool
    at: datetime


class WebhookLog(BaseModel):
    task_id: str
    webhook_url: str | None
    deliveries: list[WebhookAttempt]


class PruneRequest(CleanBody):
    older_than_days: float = Field(ge=0, le=36500, description="Tasks that ended longer ago than this.")
    status: Literal["succeeded", "failed", "canceled", "dead"] | None = Field(
        default=None, description="Only tasks that ended in this state (default: every final state)."
    )
    all_users: bool = Field(default=False, description="Every user's tasks (admin keys only).")


class PruneResult(BaseModel):
    deleted: int


class DocumentInfo(BaseModel):
    document_id: str
    chunks: int = Field(description="Chunks of it in the vector store now.")
    source: str | None = Field(description="The URL, or the uploaded file's name.")
    content_type: str | None
    task_id: str = Field(description="The ingest task that indexed this version.")
    indexed_at: datetime | None


class DocumentList(BaseModel):
    documents: list[DocumentInfo]


class AdminLane(BaseModel):
    lane: str
    user: str | None = Field(description="Whose lane (none: the shared default lane).")
    queued: int
    running: int
    oldest_queued_age_s: float | None


class AdminOverview(BaseModel):
    lanes: list[AdminLane]
    shared_workers: WorkerList


@router.get("/tasks", response_model=TaskList, tags=["status"])
async def list_tasks(page: TaskList = Depends(task_page)) -> TaskList:
    """The caller's tasks, newest first, optionally by status; a malformed cursor is 422 invalid_cursor."""
    return page


@router.post(
    "/tasks/{task_id}/retry",
    response_model=TaskCreated,
    status_code=202,
    tags=["status"],
    responses=documented(404, 409),
)
async def retry_task(
    task_id: str,
    response: Response,
    who: Principal = Depends(client_access),
    state: AppState = Depends(get_state),
) -> TaskCreated:
    """Queue a failed, dead or canceled task again (same input and options; attempts start over)."""
    status = await state.jobs.retry(who.user_id, task_id)
    response.headers["Location"] = f"/api/v1/status/{quote(task_id)}"
    return TaskCreated(task_id=task_id, status=status)


@router.get(
    "/tasks/{task_id}/webhooks", response_model=WebhookLog, tags=["webhooks"], responses=documented(404)
)
async def webhook_log(
    task_id: str, who: Principal = Depends(client_access), state: AppState = Depends(get_state)
) -> WebhookLog:
    """Every attempt to deliver this task's webhook: HTTP status or error, and when."""
    job = await state.jobs.get(who.user_id, task_id)  # the caller's task, else 404
    rows = await state.jobs.list_deliveries(job.id)
    return WebhookLog(
        task_id=task_id,
        webhook_url=job.webhook_url,
        deliveries=[WebhookAttempt.model_validate(asdict(r)) for r in rows],
    )


@router.post("/tasks/prune", response_model=PruneResult, tags=["status"])
async def prune_tasks(
    body: PruneRequest, who: Principal = Depends(client_access), state: AppState = Depends(get_state)
) -> PruneResult:
    """Delete the caller's ended tasks older than ``older_than_days`` (``all_users``: admin keys)."""
    if body.all_users and who.scope is not Scope.admin:
        raise Forbidden("all_users needs an admin key", code="wrong_scope")
    cutoff = utcnow() - timedelta(days=body.older_than_days)
    status = JobState(body.status) if body.status else None
    deleted = await state.jobs.prune(who.user_id, body.all_users, cutoff, status)
    return PruneResult(deleted=deleted)


@router.get("/documents", response_model=DocumentList, tags=["search"], responses=documented(503))
async def list_documents(
    request: Request,
    limit: int = Query(200, ge=1, le=1000),
    who: Principal = Depends(client_access),
    state: AppState = Depends(get_state),
) -> DocumentList:
    """The caller's indexed documents, newest first: chunk count, source and the task that made them."""
    docs = await state.jobs.list_documents(who.user_id, limit)
    out = []
    try:
        for doc in docs:
            chunks = await request.app.state.indexer.count_points(index_user(who.user_id), doc.document_id)
            if chunks:  # deleted documents keep their task, not their chunks
                out.append(DocumentInfo(chunks=chunks, **asdict(doc)))
    except IndexingError as exc:
        raise _translate(exc) from exc
    return DocumentList(documents=out)


@router.get("/admin/overview", response_model=AdminOverview, tags=["status"])
async def admin_overview(
    who: Principal = Depends(admin_access), state: AppState = Depends(get_state)
) -> AdminOverview:
    """Admin keys: every user's lanes with queued or running jobs, and the shared workers."""
    lanes = await state.jobs.list_busy_lanes()
    shared = await state.jobs.list_shared_workers()
    return AdminOverview(
        lanes=[AdminLane.model_validate(asdict(lane)) for lane in lanes],
        shared_workers=WorkerList.model_validate({"workers": [asdict(w) for w in shared]}),
    )


class LaneView(BaseModel):
    lane: str
    kind: Literal["gpu", "cpu", "shared"]
    queued: int
    running: int
    oldest_queued_age_s: float | None
    workers_online: int
    falls_back_to: str | None = Field(description="Where a job waiting here goes now, if anywhere.")
    note: str = Field(description="The same, for a person.")


class LaneList(BaseModel):
    lanes: list[LaneView]


def _lane_kind(name: str) -> Literal["gpu", "cpu", "shared"]:
    return "gpu" if name.startswith("gpu-") else "cpu" if name.startswith("cpu-") else "shared"


def _lane_view(lane: LaneCount, online: dict[str, int], who: Principal, settings: Settings) -> LaneView:
    """Explain where a job of this lane runs now, following the user's fallback settings."""
    name = lane.lane
    kind = _lane_kind(name)
    to: str | None = None
    if kind == "shared":
        note = "shared workers take these jobs" if lane.workers_online else "waits for a shared worker"
    elif lane.workers_online:
        after = settings.fallback_after_s if kind == "gpu" else settings.shared_fallback_after_s
        note = f"your {kind.upper()} workers take these jobs (fallback only after {after:g} s waiting)"
    elif kind == "gpu" and who.cpu_fallback and online["cpu"]:
        to, note = "cpu", "no GPU worker online: jobs fall back to your CPU workers now"
    elif who.shared_fallback and online["shared"]:
        to, note = "shared", f"no {kind.upper()} worker of yours online: jobs fall back to shared workers now"
    elif who.shared_fallback or (kind == "gpu" and who.cpu_fallback):
        note = f"no {kind.upper()} worker of yours online and nowhere to fall back: jobs wait"
    else:
        note = f"jobs wait for one of your {kind.upper()} workers (fallback is off for you)"
    return LaneView(
        lane=name,
        kind=kind,
        queued=lane.queued,
        running=lane.running,
        oldest_queued_age_s=lane.oldest_queued_age_s,
        workers_online=lane.workers_online,
        falls_back_to=to,
        note=note,
    )


@router.get("/lanes", response_model=LaneList, tags=["status"])
async def lanes(who: Principal = Depends(client_access), state: AppState = Depends(get_state)) -> LaneList:
    """The caller's lanes: queued, running, oldest waiting, workers online and where jobs fall back now."""
    stats = await state.jobs.queue_stats(who.user_id)
    online = {"gpu": 0, "cpu": 0, "shared": 0}
    for lane in stats:
        online[_lane_kind(lane.lane)] = lane.workers_online
    return LaneList(lanes=[_lane_view(lane, online, who, state.settings) for lane in stats])


class Me(BaseModel):
    user: str | None
    scope: str
    cpu_fallback: bool
    shared_fallback: bool


@router.get("/me", response_model=Me, tags=["status"])
async def me(who: Principal = Depends(client_access)) -> Me:
    """Who this key belongs to: its user, scope and fallback settings."""
    return Me(
        user=who.user_name,
        scope=who.scope.value,
        cpu_fallback=who.cpu_fallback,
        shared_fallback=who.shared_fallback,
    )
