"""Request and answer bodies of the worker protocol (see docs/protocol.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from protocol.errors import ErrorBody, ErrorClass
from protocol.inputs import CleanBody
from protocol.states import ContentType, LaneKind, Scope

MAX_CLAIM_WAIT_S = 30.0
# The most results one request carries (``ClaimRequest.results``, ``CompleteBatchRequest.results``).
MAX_RESULTS_PER_REQUEST = 100


class _Body(CleanBody):
    """A worker's request body: no unknown fields, nothing the database cannot store."""


class CompleteRequest(_Body):
    job_id: str
    lease_token: str
    markdown: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class CompleteBatchItem(BaseModel):
    """One result of a batch: stored (``status``) or refused (``error``: stale_lease, job_canceled)."""

    job_id: str
    status: str | None = None
    error: ErrorBody | None = None


class ClaimRequest(_Body):
    """A worker asks for up to ``max_jobs`` jobs and waits up to ``wait_s`` seconds for them."""

    worker_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
    lanes: list[LaneKind] = Field(default_factory=lambda: [LaneKind.cpu], min_length=1)
    content_types: list[ContentType] = Field(min_length=1)
    max_jobs: int = Field(default=1, ge=1, le=100)
    wait_s: float = Field(default=20.0, ge=0.0, le=MAX_CLAIM_WAIT_S)
    claim_id: str | None = Field(
        default=None,
        max_length=128,
        description="Idempotency id: a retried claim with the same id gets the same jobs back.",
    )
    name: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=50)
    device: str | None = Field(
        default=None,
        max_length=200,
        description="What processes this worker's jobs, e.g. 'cuda: 1 GPU, 139 GiB' or 'cpu: 16 cores'.",
    )
    retry: bool = Field(
        default=False,
        description="True when this re-sends a claim whose answer was lost (same claim_id): the server "
        "then answers with the jobs it already leased under that id, if any, before leasing more.",
    )
    results: list[CompleteRequest] = Field(
        default_factory=list,
        max_length=MAX_RESULTS_PER_REQUEST,
        description="Finished jobs riding on this claim, stored in one transaction before the claim "
        "runs (each as POST /worker/complete would); their outcomes come back in the answer's "
        "`results`. A claim that carries results answers at once (no long-poll).",
    )
    standby: bool = Field(
        default=False,
        description="A standby claim, from a worker whose slots and prefetched jobs are all taken "
        "(server feature `claim-standby`): it waits without looking at the queue, and a newly "
        "queued job that no other waiting claim fits wakes it (at most MORAG_CLAIM_STANDBY_LANE_RATE "
        "jobs of one lane a second); it then takes the first job in its claim's order. Re-checks "
        "never wake it.",
    )


class ClaimedJob(BaseModel):
    job_id: str
    lease_token: str
    lease_expires_at: datetime
    attempt: int
    content_type: ContentType
    options: dict[str, Any]
    download_url: str | None = None
    source_url: str | None = None
    cookies: str | None = Field(default=None, description="Netscape cookies.txt for source_url")
    file_name: str | None = None
    file_size: int | None = None
    file_sha256: str | None = None


class ClaimResponse(BaseModel):
    jobs: list[ClaimedJob]
    results: list[CompleteBatchItem] = Field(
        default_factory=list, description="The outcome of each result that rode on the claim, in order."
    )


class HeartbeatRequest(_Body):
    job_id: str
    lease_token: str
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    message: str | None = Field(default=None, max_length=500)


class HeartbeatResponse(BaseModel):
    lease_expires_at: datetime
    canceled: bool


class CompleteResponse(BaseModel):
    job_id: str
    status: str


class CompleteBatchRequest(_Body):
    """Several finished jobs in one request: stored in one transaction."""

    results: list[CompleteRequest] = Field(min_length=1, max_length=MAX_RESULTS_PER_REQUEST)


class CompleteBatchResponse(BaseModel):
    results: list[CompleteBatchItem]


class FailRequest(_Body):
    job_id: str
    lease_token: str
    error: str = Field(max_length=10_000)
    error_class: ErrorClass = ErrorClass.internal
    retryable: bool = True


class FailResponse(BaseModel):
    job_id: str
    status: str
    retry_at: datetime | None = None


class HelloResponse(BaseModel):
    """What ``GET /worker/hello`` tells a worker about itself and the server."""

    protocol_version: str
    server_version: str
    user: str | None
    scope: Scope
    lanes: list[LaneKind]
    lease_s: float
    max_claim_wait_s: float
    features: list[str] = Field(
        default_factory=list,
        description="Optional protocol features this server has; `claim-results`: finished jobs may "
        "ride on a claim (`ClaimRequest.results`).",
    )


class ArtifactResponse(BaseModel):
    """What ``POST /worker/artifact`` stored: the server's size, SHA-256 and sniffed MIME type."""

    job_id: str
    name: str
    size: int
    sha256: str
    mime: str
