"""The worker protocol: claim (long-poll), heartbeat, artifact upload, complete, fail."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.requests import ClientDisconnect

from api import artifacts, cookies, filestore, jobstore
from api.auth import worker_access
from api.errors import BadRequest
from api.keystore import Principal, Scope
from api.settings import Settings
from protocol import PROTOCOL_VERSION, paths, signing
from protocol.errors import ErrorBody
from protocol.models import (
    ArtifactResponse,
    ClaimedJob,
    ClaimRequest,
    ClaimResponse,
    CompleteRequest,
    CompleteResponse,
    FailRequest,
    FailResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    HelloResponse,
)
from protocol.states import LaneKind

router = APIRouter(tags=["worker"])

_NO_JOB: dict[int | str, dict[str, Any]] = {204: {"description": "No job arrived within wait_s"}}
_ARTIFACT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "An empty body (`empty_file`) or the client hung up (`upload_aborted`)"),
        (404, "Unknown job, or not this key's (`job_not_found`)"),
        (409, "`stale_lease`, `job_canceled`, or `too_many_artifacts` (MORAG_MAX_ARTIFACTS_PER_JOB)"),
        (413, "Larger than MORAG_MAX_ARTIFACT_BYTES (`artifact_too_large`); nothing was kept"),
        (507, "The server's disk is full; nothing was kept"),
    )
}
_ARTIFACT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _base_url(settings: Settings, request: Request) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/")


async def _to_wire(request: Request, rows: list[Any], who: Principal) -> list[ClaimedJob]:
    state = request.app.state.morag
    settings: Settings = state.settings
    files = await filestore.get_files(state.engine, [r.file_id for r in rows if r.file_id])
    out = []
    for r in rows:
        item = ClaimedJob(
            job_id=r.id,
            lease_token=r.lease_token,
            lease_expires_at=r.lease_expires_at,
            attempt=r.attempt,
            content_type=r.content_type,
            options=r.options or {},
        )
        if r.file_id and r.file_id in files:
            f = files[r.file_id]
            exp = int(time.time() + settings.signed_url_ttl_s)
            sig = signing.sign(state.secret, r.file_id, r.id, r.lease_token, exp)
            item.download_url = (
                f"{_base_url(settings, request)}/files/{r.file_id}?job={r.id}&exp={exp}&sig={sig}"
            )
            item.file_name, item.file_size, item.file_sha256 = f["original_name"], f["size"], f["sha256"]
        if r.source_url:
            item.source_url = r.source_url
            item.cookies = await cookies.cookies_for_worker(state, who, r.user_id, r.source_url)
        out.append(item)
    return out


@router.get(paths.HELLO, response_model=HelloResponse)
async def hello(request: Request, who: Principal = Depends(worker_access)) -> HelloResponse:
    """Tell a worker who it is for the server and which protocol the server speaks."""
    settings: Settings = request.app.state.morag.settings
    lanes = [LaneKind.default] if who.scope is Scope.shared_worker else [LaneKind.gpu, LaneKind.cpu]
    return HelloResponse(
        protocol_version=PROTOCOL_VERSION,
        server_version=request.app.version,
        user=who.user_name,
        scope=who.scope.value,
        lanes=lanes,
        lease_s=settings.lease_s,
        max_claim_wait_s=settings.claim_wait_max_s,
    )


@router.post(paths.CLAIM, response_model=ClaimResponse, responses=_NO_JOB)
async def claim(body: ClaimRequest, request: Request, who: Principal = Depends(worker_access)) -> Any:
    """Lease jobs to a worker; waits up to ``wait_s`` for one to arrive (204 when none did)."""
    state = request.app.state.morag
    settings: Settings = state.settings
    if body.claim_id:
        replay = await jobstore.replay_claim(state.engine, who, body.claim_id)
        if replay:
            return ClaimResponse(jobs=await _to_wire(request, replay, who))
    content_types = [c.value for c in body.content_types]
    deadline = time.monotonic() + min(body.wait_s, settings.claim_wait_max_s)
    while True:
        wake = state.notifier.generation
        rows = await jobstore.claim_jobs(
            state.engine,
            settings,
            who,
            body.worker_id,
            body.lanes,
            content_types,
            body.max_jobs,
            body.claim_id,
            body.name,
            body.version,
        )
        if rows:
            if await request.is_disconnected():  # the worker left during its long-poll: give them back
                await jobstore.release_claimed(state.engine, state.notifier, rows)
                return Response(status_code=204)
            return ClaimResponse(jobs=await _to_wire(request, rows, who))
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        await state.notifier.wait(wake, min(remaining, settings.claim_recheck_s))


@router.post(paths.HEARTBEAT, response_model=HeartbeatResponse)
async def heartbeat(
    body: HeartbeatRequest, request: Request, who: Principal = Depends(worker_access)
) -> HeartbeatResponse:
    """Extend a lease and record progress; says whether the job was canceled meanwhile."""
    state = request.app.state.morag
    expires, canceled = await jobstore.heartbeat(
        state.engine, state.settings, who, body.job_id, body.lease_token, body.progress, body.message
    )
    return HeartbeatResponse(lease_expires_at=expires, canceled=canceled)


@router.post(
    paths.ARTIFACT, response_model=ArtifactResponse, responses=_ARTIFACT_ERRORS, openapi_extra=_ARTIFACT_BODY
)
async def upload_artifact(
    request: Request,
    job_id: str = Query(..., max_length=64),
    lease_token: str = Query(..., max_length=64),
    name: str = Query(
        ..., pattern=artifacts.NAME_PATTERN, description="A plain file name, e.g. thumbnail.jpg"
    ),
    who: Principal = Depends(worker_access),
) -> ArtifactResponse:
    """Store one binary output of a running job (streamed body); the same name again replaces it."""
    state = request.app.state.morag
    length = request.headers.get("content-length")
    try:
        row = await artifacts.save_artifact(
            state.engine,
            state.settings,
            who,
            job_id,
            lease_token,
            name,
            request.stream(),
            int(length) if length and length.isdigit() else None,
        )
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection midway", code="upload_aborted") from exc
    return ArtifactResponse(
        job_id=job_id, name=name, size=row["size"], sha256=row["sha256"], mime=row["mime"]
    )


@router.post(paths.COMPLETE, response_model=CompleteResponse)
async def complete(
    body: CompleteRequest, request: Request, who: Principal = Depends(worker_access)
) -> CompleteResponse:
    """Deliver a job's result; only the current lease may, and repeating it is harmless."""
    state = request.app.state.morag
    status = await jobstore.complete_job(
        state.engine, state.notifier, body.job_id, body.lease_token, body.markdown, body.metadata
    )
    await state.on_job_changed(body.job_id)
    return CompleteResponse(job_id=body.job_id, status=status)


@router.post(paths.FAIL, response_model=FailResponse)
async def fail(body: FailRequest, request: Request, who: Principal = Depends(worker_access)) -> FailResponse:
    """Report a failed job: retryable errors are retried with backoff, others end the job."""
    state = request.app.state.morag
    status, retry_at = await jobstore.fail_job(
        state.engine,
        state.notifier,
        state.settings,
        body.job_id,
        body.lease_token,
        body.error,
        body.error_class,
        body.retryable,
    )
    await state.on_job_changed(body.job_id)
    return FailResponse(job_id=body.job_id, status=status, retry_at=retry_at)
