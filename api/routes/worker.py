"""The worker protocol: claim (long-poll), heartbeat, artifact upload, complete, fail."""

from __future__ import annotations

import random
import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.requests import ClientDisconnect

from api import artifacts
from api.auth import worker_access
from api.claims import claim_answer
from api.errors import BadRequest, MoragError
from api.ids import utcnow
from api.jobs import Lease, LeasedJob
from api.jobs.claim import claim_key, handoff_lease
from api.keystore import Principal, Scope
from api.settings import Settings
from api.state import AppState, get_state
from protocol import FEATURE_CLAIM_RESULTS, FEATURE_CLAIM_STANDBY, PROTOCOL_VERSION, paths
from protocol.errors import ErrorBody
from protocol.models import (
    ArtifactResponse,
    ClaimRequest,
    ClaimResponse,
    CompleteBatchItem,
    CompleteBatchRequest,
    CompleteBatchResponse,
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
        (
            409,
            "`stale_lease` (no current lease of this key on the job), `job_canceled`, or "
            "`too_many_artifacts` (MORAG_MAX_ARTIFACTS_PER_JOB)",
        ),
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


def _base_url(state: AppState, request: Request) -> str:
    return (state.settings.public_url or str(request.base_url)).rstrip("/")


@router.get(paths.HELLO, response_model=HelloResponse)
async def hello(
    request: Request, who: Principal = Depends(worker_access), state: AppState = Depends(get_state)
) -> HelloResponse:
    """Tell a worker who it is for the server and which protocol the server speaks."""
    lanes = [LaneKind.default] if who.scope is Scope.shared_worker else [LaneKind.gpu, LaneKind.cpu]
    return HelloResponse(
        protocol_version=PROTOCOL_VERSION,
        server_version=request.app.version,
        user=who.user_name,
        scope=who.scope,
        lanes=lanes,
        lease_s=state.settings.lease_s,
        max_claim_wait_s=state.settings.claim_wait_max_s,
        features=[FEATURE_CLAIM_RESULTS, FEATURE_CLAIM_STANDBY],
    )


@router.post(paths.CLAIM, response_model=ClaimResponse, responses=_NO_JOB)
async def claim(
    body: ClaimRequest,
    request: Request,
    who: Principal = Depends(worker_access),
    state: AppState = Depends(get_state),
) -> Any:
    """Lease jobs to a worker; waits up to ``wait_s`` for one to arrive (204 when none did).

    Results riding on the claim (``results``) are stored first, in one transaction, exactly as
    ``/worker/complete-batch`` stores them; such a claim answers at once with their outcomes.
    A ``standby`` claim waits first and takes only a new job no other waiting claim fits
    (api.waiters)."""
    settings = state.settings
    done = await _store_results(state, who, body.results) if body.results else []
    if body.claim_id and body.retry:  # only a re-sent claim looks for what it may already hold
        replay = await state.jobs.replay_claim(who, body.claim_id)
        if replay:
            jobs = await claim_answer(state, who, _base_url(state, request), replay)
            return ClaimResponse(jobs=jobs, results=done)
    content_types = [c.value for c in body.content_types]
    deadline = time.monotonic() + (0.0 if body.results else poll_wait(body.wait_s, settings))

    async def run_claim() -> list[LeasedJob]:
        return await state.jobs.claim(
            who,
            body.worker_id,
            body.lanes,
            content_types,
            body.max_jobs,
            body.claim_id,
            body.name,
            body.version,
            body.device,
        )

    def wait_first() -> bool:  # its group found nothing just now: wait as the others do
        return state.jobs.presence_kept(
            who, body.worker_id, body.lanes, content_types, body.name, body.version, body.device
        )

    def take() -> dict[str, Any] | None:  # a new job of its own lanes, leased by its insert
        if not wait_first():  # its presence row needs a write, which goes with a claim query
            return None
        return handoff_lease(who, body.worker_id, body.claim_id, settings.lease_s, utcnow())

    async def give_back(jobs: list[LeasedJob]) -> None:
        await state.jobs.release_claimed(who, jobs)

    # Waiting costs no query: a queued job wakes one suitable waiter (api.waiters), or is leased to
    # it by the job's own insert.
    leased = await state.notifier.waiters.claim_or_wait(
        claim_key(who, body.lanes, content_types),
        run_claim,
        body.max_jobs,
        deadline,
        request.is_disconnected,
        wait_first,
        take if settings.claim_handoff else None,
        give_back,
        standby=body.standby,
    )
    if leased and await request.is_disconnected():  # the worker left during its long-poll: give them back
        await state.jobs.release_claimed(who, leased)
        leased = []
    if not leased and not done:
        return Response(status_code=204)
    jobs = await claim_answer(state, who, _base_url(state, request), leased) if leased else []
    return ClaimResponse(jobs=jobs, results=done)


def poll_wait(asked_s: float, settings: Settings) -> float:
    """How long this long-poll waits: what it asked (at most the server's longest), ending at a
    random point in its last ``claim_wait_spread``. Workers that re-poll at once after a 204
    would otherwise stay in step for ever after a restart, and 1,000 of them hit the server in
    the same second every ``claim_wait_max_s`` (bench/idle_polls.py)."""
    wait = min(asked_s, settings.claim_wait_max_s)
    return wait * (1.0 - settings.claim_wait_spread * random.random())


async def _store_results(
    state: AppState, who: Principal, results: list[CompleteRequest]
) -> list[CompleteBatchItem]:
    """Store finished jobs in one transaction; per result its new status or why it was refused."""
    batch = [(Lease(r.job_id, r.lease_token, who.key_id), r.markdown, r.metadata) for r in results]
    outcomes = await state.jobs.complete_many(batch)
    items = []
    for r, outcome in zip(results, outcomes, strict=True):
        if isinstance(outcome, MoragError):
            error = ErrorBody(code=outcome.code, message=outcome.message)
            items.append(CompleteBatchItem(job_id=r.job_id, error=error))
        else:
            state.events.publish(outcome)
            items.append(CompleteBatchItem(job_id=r.job_id, status=outcome.state))
    return items


@router.post(paths.HEARTBEAT, response_model=HeartbeatResponse)
async def heartbeat(
    body: HeartbeatRequest, who: Principal = Depends(worker_access), state: AppState = Depends(get_state)
) -> HeartbeatResponse:
    """Extend a lease and record progress; says whether the job was canceled meanwhile."""
    lease = Lease(body.job_id, body.lease_token, who.key_id)
    beat = await state.jobs.heartbeat(lease, body.progress, body.message)
    return HeartbeatResponse(lease_expires_at=beat.lease_expires_at, canceled=beat.canceled)


@router.post(
    paths.ARTIFACT, response_model=ArtifactResponse, responses=_ARTIFACT_ERRORS, openapi_extra=_ARTIFACT_BODY
)
async def upload_artifact(
    request: Request,
    job_id: str = Query(..., max_length=64),
    lease_token: str = Header(
        ..., alias=paths.LEASE_TOKEN_HEADER, max_length=64, description="The job's lease (never in the URL)"
    ),
    name: str = Query(
        ..., pattern=artifacts.NAME_PATTERN, description="A plain file name, e.g. thumbnail.jpg"
    ),
    who: Principal = Depends(worker_access),
    state: AppState = Depends(get_state),
) -> ArtifactResponse:
    """Store one binary output of a running job (streamed body); the same name again replaces it."""
    length = request.headers.get("content-length")
    lease = Lease(job_id, lease_token, who.key_id)
    try:
        row = await artifacts.save_artifact(
            state.jobs, lease, name, request.stream(), int(length) if length and length.isdigit() else None
        )
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection midway", code="upload_aborted") from exc
    return ArtifactResponse(
        job_id=job_id, name=name, size=row["size"], sha256=row["sha256"], mime=row["mime"]
    )


@router.post(paths.COMPLETE, response_model=CompleteResponse)
async def complete(
    body: CompleteRequest, who: Principal = Depends(worker_access), state: AppState = Depends(get_state)
) -> CompleteResponse:
    """Deliver a job's result; only the current lease of this key may, and repeating it is harmless."""
    event = await state.jobs.complete(
        Lease(body.job_id, body.lease_token, who.key_id), body.markdown, body.metadata
    )
    state.events.publish(event)
    return CompleteResponse(job_id=body.job_id, status=event.state)


@router.post(paths.COMPLETE_BATCH, response_model=CompleteBatchResponse)
async def complete_batch(
    body: CompleteBatchRequest, who: Principal = Depends(worker_access), state: AppState = Depends(get_state)
) -> CompleteBatchResponse:
    """Deliver several results in one request and one transaction; each is stored or refused alone."""
    return CompleteBatchResponse(results=await _store_results(state, who, body.results))


@router.post(paths.FAIL, response_model=FailResponse)
async def fail(
    body: FailRequest, who: Principal = Depends(worker_access), state: AppState = Depends(get_state)
) -> FailResponse:
    """Report a failed job: retryable errors are retried with backoff, others end the job."""
    lease = Lease(body.job_id, body.lease_token, who.key_id)
    outcome = await state.jobs.fail(lease, body.error, body.error_class, body.retryable)
    state.events.publish(outcome.event)
    return FailResponse(job_id=body.job_id, status=outcome.state, retry_at=outcome.retry_at)
