"""All HTTP between the worker and the server: retries, error translation, streaming downloads.

Transient trouble (connection errors, timeouts, 5xx, 429) is retried with exponential backoff and
full jitter (``backoff``), honouring ``Retry-After``; a 4xx that cannot succeed is never retried.
httpx exceptions never leave this module: callers see ``worker.errors.ServerError`` subclasses.

    ServerError
    ├── ServerUnreachable   connection failed, timed out, or 5xx/429 until the retries ran out
    └── ServerRejected      a 4xx answer (``status``, ``code``)
        ├── AuthFailed      401/403: wrong, revoked or wrong-scope key
        └── LeaseLost       409 stale_lease / job_canceled: stop working on the job
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import backoff
import httpx

from protocol import paths
from protocol.errors import ErrorClass, ErrorCode
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
from worker import __version__
from worker.completions import REFUSED_AS_A_WHOLE, Completions, Pending, answer_of, fail_all, settle
from worker.config import backoff_delay
from worker.errors import BadInput, ServerError, TransientError

__all__ = ["AuthFailed", "LeaseLost", "ServerError", "ServerRejected", "ServerUnreachable", "WorkerClient"]

T = TypeVar("T")
DownloadProgress = Callable[[int, int | None], None]
UPLOAD_CHUNK = 1024 * 1024


class ServerUnreachable(ServerError):
    """The server could not be reached (connection refused, timeout, 5xx); retries ran out."""

    def __init__(self, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerRejected(ServerError):
    """The server refused the request."""

    def __init__(self, message: str | None = None, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthFailed(ServerRejected):
    """The API key is missing, unknown, revoked or not a worker key."""


class LeaseLost(ServerRejected):
    """The job's lease is gone (reclaimed, finished) or the job was canceled."""

    @property
    def canceled(self) -> bool:
        return self.code == ErrorCode.job_canceled


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _wait_gen(base: float, cap: float) -> Generator[float | None, Exception, None]:
    """Full-jitter exponential waits; a Retry-After the server sent wins over the formula."""
    exc = yield None
    attempt = 0
    while True:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            value = min(float(retry_after), 600.0)  # the caller's max_time still bounds the total
        else:
            value = backoff_delay(attempt, base, cap)
        attempt += 1
        exc = yield value


def _rejected(resp: httpx.Response) -> ServerRejected:
    try:
        body = resp.json()
        code, message = str(body.get("code", "")), str(body.get("message", resp.text))
    except (ValueError, AttributeError):
        code, message = "", resp.text[:300]
    code = code or f"http_{resp.status_code}"
    text = f"HTTP {resp.status_code} {code}: {message}"
    if resp.status_code in (401, 403) and code != "bad_signature":
        return AuthFailed(text, resp.status_code, code)
    if resp.status_code == 409 and code in (ErrorCode.stale_lease, ErrorCode.job_canceled):
        return LeaseLost(text, resp.status_code, code)
    return ServerRejected(text, resp.status_code, code)


def _check(resp: httpx.Response) -> httpx.Response:
    """Raise a retryable ServerUnreachable for 5xx/429, a final ServerRejected for other 4xx."""
    if resp.status_code == 429 or resp.status_code >= 500:
        raise ServerUnreachable(
            f"server answered HTTP {resp.status_code}", parse_retry_after(resp.headers.get("retry-after"))
        )
    if resp.status_code >= 400:
        raise _rejected(resp)
    return resp


class WorkerClient:
    """The worker's side of the protocol over one pooled httpx.AsyncClient."""

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 30.0,
        max_tries: int = 8,
        max_time_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.retry_base_s, self.retry_cap_s = retry_base_s, retry_cap_s
        self.max_tries, self.max_time_s = max_tries, max_time_s
        self.timeout_s = timeout_s
        self.completions = Completions(self.call)
        self._http = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"morag-worker/{__version__}"},
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _retrying(
        self, call: Callable[[], Any], *, max_time_s: float | None = None, max_tries: int | None = None
    ) -> Any:
        """Run ``call`` (an async callable) with backoff on ServerUnreachable."""
        deco = backoff.on_exception(
            lambda: _wait_gen(self.retry_base_s, self.retry_cap_s),  # type: ignore[arg-type,return-value]
            ServerUnreachable,
            max_tries=max_tries or self.max_tries,
            max_time=self.max_time_s if max_time_s is None else max_time_s,
            jitter=None,
            logger=None,
        )

        async def attempt() -> Any:  # backoff picks its async path only for coroutine functions
            return await call()

        return await deco(attempt)()

    async def _request(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        """One attempt; transport errors become ServerUnreachable."""
        try:
            resp = await self._http.request(
                method, path, json=json, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
            )
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"cannot reach {self.server}: {type(exc).__name__}: {exc}") from exc
        return _check(resp)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
        max_time_s: float | None = None,
        max_tries: int | None = None,
    ) -> httpx.Response:
        """A request retried on transient failures; 4xx raise at once."""
        resp: httpx.Response = await self._retrying(
            lambda: self._request(method, path, json=json, timeout=timeout),
            max_time_s=max_time_s,
            max_tries=max_tries,
        )
        return resp

    async def hello(self) -> HelloResponse:
        """Who this key is for the server, its protocol version and lease length."""
        resp = await self.call("GET", paths.HELLO, max_tries=3, max_time_s=15)
        return HelloResponse.model_validate(resp.json())

    async def claim(self, req: ClaimRequest, riders: list[Pending] | None = None) -> list[ClaimedJob]:
        """Long-poll for jobs; an empty list when none came within ``wait_s`` (HTTP 204).

        ``riders`` (from ``completions.take_riders()``): results sent on this claim; each caller
        hears its own outcome, or the claim's failure."""
        riders = riders or []
        if riders:
            req = req.model_copy(update={"results": [b for b, _ in riders], "wait_s": 0.0})
        body = req.model_dump(mode="json", exclude_none=True)
        if not req.standby:  # a server without the claim-standby feature refuses the field
            body.pop("standby", None)
        sent = 0

        async def attempt() -> httpx.Response:
            nonlocal sent
            sent += 1  # a re-send may find the jobs the lost answer held: it says so
            again = {**body, "retry": True} if sent > 1 and req.claim_id else body
            return await self._request("POST", paths.CLAIM, json=again, timeout=req.wait_s + self.timeout_s)

        try:
            resp: httpx.Response = await self._retrying(attempt)
            answer = ClaimResponse(jobs=[])
            if resp.status_code != 204 and resp.content:
                answer = ClaimResponse.model_validate(resp.json())
            if len(answer.results) != len(riders):
                got = f"{len(answer.results)} of {len(riders)}"
                raise ServerRejected(f"the claim answered {got} results riding on it", 502)
        except ServerRejected as exc:
            if riders and exc.status in REFUSED_AS_A_WHOLE:  # not each result's verdict
                self.completions.send_each(riders)
            else:
                fail_all(riders, exc)
            raise
        except BaseException as exc:
            fail_all(riders, exc)
            raise
        settle(riders, [answer_of(item) for item in answer.results])
        return answer.jobs

    async def heartbeat(
        self,
        job_id: str,
        lease_token: str,
        progress: float | None = None,
        message: str | None = None,
        *,
        max_time_s: float | None = None,
    ) -> HeartbeatResponse:
        """Extend the lease and report progress; raises LeaseLost on 409."""
        body = HeartbeatRequest(
            job_id=job_id,
            lease_token=lease_token,
            progress=progress,
            message=(message or None) and message[:500],
        )
        resp = await self.call(
            "POST", paths.HEARTBEAT, json=body.model_dump(mode="json"), max_time_s=max_time_s
        )
        return HeartbeatResponse.model_validate(resp.json())

    async def complete(
        self,
        job_id: str,
        lease_token: str,
        markdown: str,
        metadata: dict[str, Any],
        *,
        max_time_s: float | None = None,
    ) -> CompleteResponse:
        """Deliver a result; repeating it with the same lease is harmless on the server.

        It rides on the next claim when one is about to go, else goes with the results of the same
        moment in one ``/worker/complete-batch`` (``worker.completions``); each caller still gets
        its own answer or its own LeaseLost.
        """
        body = CompleteRequest(job_id=job_id, lease_token=lease_token, markdown=markdown, metadata=metadata)
        return await self.completions.complete(body, max_time_s)

    async def upload_artifact(
        self, job_id: str, lease_token: str, path: Path, name: str, *, max_time_s: float | None = None
    ) -> ArtifactResponse:
        """Stream one file to the job's artifacts under its lease; a retry replaces the same name."""
        params = {"job_id": job_id, "name": name}
        size = path.stat().st_size  # noqa: ASYNC240 (no I/O wait worth a thread)

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:  # opened per attempt: a retry sends the whole file again
                while chunk := fh.read(UPLOAD_CHUNK):
                    yield chunk

        async def attempt() -> httpx.Response:
            try:
                resp = await self._http.post(
                    paths.ARTIFACT,
                    params=params,
                    content=body(),
                    # A declared length lets the server refuse an oversized file before any byte.
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                        paths.LEASE_TOKEN_HEADER: lease_token,
                    },
                )
            except httpx.TransportError as exc:
                raise ServerUnreachable(f"artifact upload to {self.server} failed: {exc!r}") from exc
            return _check(resp)

        resp: httpx.Response = await self._retrying(attempt, max_time_s=max_time_s)
        return ArtifactResponse.model_validate(resp.json())

    async def fail(
        self,
        job_id: str,
        lease_token: str,
        error: str,
        error_class: str,
        retryable: bool,
        *,
        max_time_s: float | None = None,
    ) -> FailResponse:
        """Report a failure (``shutdown`` gives the lease back at once)."""
        body = FailRequest(
            job_id=job_id,
            lease_token=lease_token,
            error=error[:10_000],
            error_class=ErrorClass(error_class),
            retryable=retryable,
        )
        resp = await self.call("POST", paths.FAIL, json=body.model_dump(mode="json"), max_time_s=max_time_s)
        return FailResponse.model_validate(resp.json())

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        size: int | None = None,
        sha256: str | None = None,
        progress: DownloadProgress | None = None,
    ) -> Path:
        """Stream ``url`` to ``dest``, resuming with Range after a broken connection; verify size/sha256."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"")  # noqa: ASYNC240 (no I/O wait worth a thread)
        state: dict[str, Any] = {"have": 0, "sha": hashlib.sha256()}

        async def attempt() -> None:
            headers = {"Range": f"bytes={state['have']}-"} if state["have"] else {}
            try:
                async with self._http.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 416:  # our partial file is wrong: start over
                        state["have"], state["sha"] = 0, hashlib.sha256()
                        dest.write_bytes(b"")  # noqa: ASYNC240 (no I/O wait worth a thread)
                        raise ServerUnreachable("range not satisfiable; restarting the download")
                    if resp.status_code >= 400:
                        await resp.aread()
                    _check(resp)
                    mode = "ab"
                    if state["have"] and resp.status_code != 206:  # the server ignored Range: restart
                        state["have"], state["sha"], mode = 0, hashlib.sha256(), "wb"
                    total = size
                    if total is None and "content-length" in resp.headers and resp.status_code == 200:
                        total = int(resp.headers["content-length"])
                    with dest.open(mode) as fh:
                        async for (
                            chunk
                        ) in resp.aiter_bytes():  # as received: nothing buffered is lost on a break
                            fh.write(chunk)
                            state["sha"].update(chunk)
                            state["have"] += len(chunk)
                            if progress:
                                progress(state["have"], total)
            except httpx.TransportError as exc:
                raise ServerUnreachable(f"download interrupted after {state['have']} bytes: {exc}") from exc
            if size is not None and state["have"] < size:
                raise ServerUnreachable(f"download ended early at {state['have']} of {size} bytes")

        try:
            await self._retrying(attempt)
        except ServerRejected as exc:
            if exc.status == 404:
                raise BadInput(f"the input file is no longer on the server ({exc.message})") from exc
            if exc.code == ErrorCode.bad_signature:
                raise TransientError(f"the download link expired ({exc.message})") from exc
            raise
        if size is not None and state["have"] != size:
            raise TransientError(f"downloaded {state['have']} bytes, expected {size}")
        digest = state["sha"].hexdigest()
        if sha256 and digest != sha256.lower():
            raise TransientError(f"checksum mismatch: got sha256 {digest}, expected {sha256}")
        return dest
