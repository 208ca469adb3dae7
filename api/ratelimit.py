"""Per-key limits so one client cannot starve the rest: 429 ``rate_limited`` with Retry-After.

    submissions (POST /process/*, /api/v1/ingest*,  token bucket per key   MORAG_RATE_SUBMIT_*
      /api/v1/tasks/*/retry: a retry queues work too)
    claims (POST /worker/claim)                     token bucket per key   MORAG_RATE_CLAIM_*
    uploads in flight (multipart submissions)       counter per key        MORAG_MAX_UPLOADS_PER_KEY
    open long-polls (claims in flight)              counter per key        MORAG_MAX_POLLS_PER_KEY

In-process (one server process keeps its own counts; several processes each enforce them). A
key is told apart by a hash of what it presents, before any database lookup, so a flood of
garbled keys is limited too; callers without a key are counted by client address.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.settings import Settings

MAX_TRACKED = 10_000  # idle buckets are forgotten past this many keys


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Limiter:
    """The buckets and in-flight counters of one server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.in_flight: dict[tuple[str, str], int] = {}

    def take(self, kind: str, key: str, rate: float, burst: float) -> float:
        now = time.monotonic()
        if len(self.buckets) > MAX_TRACKED:
            self.buckets = {k: b for k, b in self.buckets.items() if now - b.at < burst / rate}
        bucket = self.buckets.setdefault((kind, key), Bucket(rate, burst))
        return bucket.take(now)

    def enter(self, kind: str, key: str, cap: int) -> bool:
        n = self.in_flight.get((kind, key), 0)
        if n >= cap:
            return False
        self.in_flight[(kind, key)] = n + 1
        return True

    def leave(self, kind: str, key: str) -> None:
        n = self.in_flight.get((kind, key), 1) - 1
        if n <= 0:
            self.in_flight.pop((kind, key), None)
        else:
            self.in_flight[(kind, key)] = n


_HASHED: dict[bytes, str] = {}  # presented key -> its hash: the same few keys call again and again


def caller(scope: Scope) -> str:
    """Who is calling, for counting: a hash of the presented key, else the client address."""
    auth = key = b""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            auth = value
        elif name == b"x-api-key":
            key = value
    presented = auth or key
    if presented:
        hashed = _HASHED.get(presented)
        if hashed is None:
            if len(_HASHED) >= MAX_TRACKED:  # a flood of garbled keys: start over
                _HASHED.clear()
            hashed = _HASHED[presented] = hashlib.sha256(presented.strip()).hexdigest()[:32]
        return hashed
    client = scope.get("client")
    return f"addr:{client[0] if client else '-'}"


def _refused(what: str, wait_s: float) -> JSONResponse:
    resp = error_response(429, "rate_limited", f"too many {what} for this key; retry after the given delay")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return resp


def _is_retry(path: str) -> bool:
    """``/api/v1/tasks/{id}/retry``: queues a task again, so it counts as a submission."""
    return path.startswith("/api/v1/tasks/") and path.endswith("/retry")


class RateLimit:
    """ASGI middleware applying the limits above."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = Limiter(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        s = self.settings
        if path == "/worker/claim":
            kind, what, rate, burst = "claim", "claims", s.rate_claim_per_s, s.rate_claim_burst
            cap = s.max_polls_per_key
        elif path.startswith(("/process/", "/api/v1/ingest")) or _is_retry(path):
            kind, what, rate, burst = "submit", "submissions", s.rate_submit_per_s, s.rate_submit_burst
            ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
            cap = s.max_uploads_per_key if ctype.lower().startswith(b"multipart/") else 0
        else:
            await self.app(scope, receive, send)
            return
        key = caller(scope)
        wait = self.limiter.take(kind, key, rate, burst)
        if wait > 0:
            await _refused(what, wait)(scope, receive, send)
            return
        if not cap:
            await self.app(scope, receive, send)
            return
        if not self.limiter.enter(kind, key, cap):
            label = "open long-polls" if kind == "claim" else "uploads in progress"
            await _refused(label, 1.0)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.leave(kind, key)
