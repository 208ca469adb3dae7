"""Every branch of the worker's HTTP client, against respx-mocked answers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from protocol.models import ClaimRequest
from worker.client import (
    AuthFailed,
    LeaseLost,
    ServerRejected,
    ServerUnreachable,
    WorkerClient,
    _wait_gen,
    parse_retry_after,
)
from worker.errors import BadInput, TransientError

BASE = "http://srv.test"
HELLO = {
    "protocol_version": "1",
    "server_version": "0.1.0",
    "user": "alice",
    "scope": "worker",
    "lanes": ["gpu", "cpu"],
    "lease_s": 60.0,
    "max_claim_wait_s": 30.0,
}


@pytest.fixture
async def client() -> AsyncIterator[WorkerClient]:
    c = WorkerClient(BASE, "KEY", retry_base_s=0.01, retry_cap_s=0.05, max_tries=4, max_time_s=5)
    yield c
    await c.aclose()


def _err(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": f"{code} happened"}, headers=headers)


@respx.mock
async def test_hello_sends_bearer_key(client: WorkerClient) -> None:
    route = respx.get(f"{BASE}/worker/hello").respond(json=HELLO)
    hello = await client.hello()
    assert hello.lease_s == 60.0 and hello.user == "alice"
    assert route.calls.last.request.headers["authorization"] == "Bearer KEY"


@respx.mock
async def test_connection_errors_are_retried_then_succeed(client: WorkerClient) -> None:
    route = respx.get(f"{BASE}/worker/hello").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json=HELLO),
        ]
    )
    assert (await client.hello()).scope == "worker"
    assert route.call_count == 3


@respx.mock
async def test_5xx_retries_stop_at_max_tries(client: WorkerClient) -> None:
    route = respx.post(f"{BASE}/worker/heartbeat").respond(503, json={"code": "x", "message": "down"})
    with pytest.raises(ServerUnreachable, match="503"):
        await client.heartbeat("j", "t", 0.5, "m")
    assert route.call_count == 4  # max_tries


@respx.mock
async def test_retries_stop_at_max_time() -> None:
    c = WorkerClient(BASE, "K", retry_base_s=0.2, retry_cap_s=0.2, max_tries=1000, max_time_s=0.5)
    route = respx.get(f"{BASE}/worker/hello").mock(side_effect=httpx.ConnectError("refused"))
    start = time.monotonic()
    with pytest.raises(ServerUnreachable, match="cannot reach"):
        await c.hello()  # hello caps itself at 3 tries / 15 s
    assert route.call_count == 3
    with pytest.raises(ServerUnreachable):
        await c.call("GET", "/worker/hello")
    assert time.monotonic() - start < 2.0
    assert 3 < route.call_count < 3 + 20
    await c.aclose()


@respx.mock
async def test_429_honours_retry_after(client: WorkerClient) -> None:
    route = respx.post(f"{BASE}/worker/fail").mock(
        side_effect=[
            _err(429, "rate_limited", **{"Retry-After": "0.4"}),
            httpx.Response(200, json={"job_id": "j", "status": "queued"}),
        ]
    )
    start = time.monotonic()
    resp = await client.fail("j", "t", "boom", "transient", True)
    assert resp.status == "queued"
    assert time.monotonic() - start >= 0.38  # the base delay alone would be ~0.01 s
    assert route.call_count == 2


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= (parse_retry_after(format_datetime(when, usegmt=True)) or 0) <= 31


def test_wait_gen_grows_with_full_jitter_and_prefers_retry_after() -> None:
    gen = _wait_gen(1.0, 8.0)
    gen.send(None)  # type: ignore[arg-type]
    waits = [gen.send(Exception()) for _ in range(6)]
    assert all(0 <= w <= cap for w, cap in zip(waits, [1, 2, 4, 8, 8, 8], strict=True))  # type: ignore[operator]
    assert gen.send(ServerUnreachable("x", retry_after=5.0)) == 5.0


@respx.mock
@pytest.mark.parametrize(
    "status,code", [(400, "bad_request"), (404, "job_not_found"), (422, "validation_error")]
)
async def test_4xx_is_never_retried(client: WorkerClient, status: int, code: str) -> None:
    route = respx.post(f"{BASE}/worker/complete").respond(status, json={"code": code, "message": "no"})
    with pytest.raises(ServerRejected) as info:
        await client.complete("j", "t", "# md", {})
    assert info.value.status == status and info.value.code == code
    assert route.call_count == 1


@respx.mock
@pytest.mark.parametrize("status,code", [(401, "unauthorized"), (403, "wrong_scope")])
async def test_bad_key_is_auth_failed(client: WorkerClient, status: int, code: str) -> None:
    route = respx.get(f"{BASE}/worker/hello").respond(status, json={"code": code, "message": "no"})
    with pytest.raises(AuthFailed) as info:
        await client.hello()
    assert info.value.code == code and route.call_count == 1


@respx.mock
async def test_stale_lease_and_canceled_are_lease_lost(client: WorkerClient) -> None:
    hb = respx.post(f"{BASE}/worker/heartbeat").mock(return_value=_err(409, "stale_lease"))
    done = respx.post(f"{BASE}/worker/complete").mock(return_value=_err(409, "job_canceled"))
    with pytest.raises(LeaseLost) as stale:
        await client.heartbeat("j", "t")
    assert not stale.value.canceled
    with pytest.raises(LeaseLost) as canceled:
        await client.complete("j", "t", "x", {}, max_time_s=5)
    assert canceled.value.canceled
    assert hb.call_count == 1 and done.call_count == 1


@respx.mock
async def test_heartbeat_reports_cancel_and_progress(client: WorkerClient) -> None:
    route = respx.post(f"{BASE}/worker/heartbeat").respond(
        json={"lease_expires_at": "2030-01-01T00:00:00Z", "canceled": True}
    )
    resp = await client.heartbeat("j", "t", 0.42, "processing: 42%")
    assert resp.canceled
    sent = route.calls.last.request.content
    assert b'"progress":0.42' in sent and b"processing: 42%" in sent


@respx.mock
async def test_claim_204_is_empty_and_jobs_parse(client: WorkerClient) -> None:
    job = {
        "job_id": "J1",
        "lease_token": "T",
        "lease_expires_at": "2030-01-01T00:00:00Z",
        "attempt": 1,
        "content_type": "echo",
        "options": {},
    }
    route = respx.post(f"{BASE}/worker/claim").mock(
        side_effect=[httpx.Response(204), httpx.Response(200, json={"jobs": [job]})]
    )
    req = ClaimRequest(worker_id="w1", content_types=["echo"], wait_s=0.1, claim_id="c1")  # type: ignore[list-item]
    assert await client.claim(req) == []
    jobs = await client.claim(req)
    assert [j.job_id for j in jobs] == ["J1"]
    assert b'"claim_id":"c1"' in route.calls.last.request.content
    assert json.loads(route.calls.last.request.content)["retry"] is False  # a first send: no replay


@respx.mock
async def test_a_resent_claim_says_retry(client: WorkerClient) -> None:
    """A claim whose first send broke is re-sent with ``retry``: the server then hands back what the
    lost answer held. Break caught: re-sending the same body (the jobs stay leased, unseen)."""
    route = respx.post(f"{BASE}/worker/claim").mock(
        side_effect=[httpx.ConnectError("reset"), httpx.Response(204)]
    )
    req = ClaimRequest(worker_id="w1", content_types=["echo"], wait_s=0.1, claim_id="c2")  # type: ignore[list-item]
    assert await client.claim(req) == []
    first, second = (json.loads(c.request.content) for c in route.calls)
    assert first["retry"] is False and second["retry"] is True and second["claim_id"] == "c2"


class _BrokenStream(httpx.AsyncByteStream):
    """Sends part of a body, then the connection breaks."""

    def __init__(self, part: bytes) -> None:
        self.part = part

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.part
        raise httpx.ReadError("connection reset")


DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


@respx.mock
async def test_download_resumes_with_range(client: WorkerClient, tmp_path: Path) -> None:
    cut = 300_000
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("range")
        seen.append(rng)
        if rng is None:
            return httpx.Response(200, stream=_BrokenStream(DATA[:cut]))
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return httpx.Response(206, content=DATA[start:])

    respx.get(f"{BASE}/files/F1").mock(side_effect=answer)
    progress: list[tuple[int, int | None]] = []
    out = await client.download(
        f"{BASE}/files/F1",
        tmp_path / "in.bin",
        size=len(DATA),
        sha256=SHA,
        progress=lambda have, total: progress.append((have, total)),
    )
    assert out.read_bytes() == DATA
    assert seen == [None, f"bytes={cut}-"]
    assert progress[-1] == (len(DATA), len(DATA))


@respx.mock
async def test_download_restarts_when_range_is_ignored(client: WorkerClient, tmp_path: Path) -> None:
    respx.get(f"{BASE}/files/F1").mock(
        side_effect=[
            httpx.Response(200, stream=_BrokenStream(DATA[:1000])),
            httpx.Response(200, content=DATA),
        ]
    )
    out = await client.download(f"{BASE}/files/F1", tmp_path / "in.bin", size=len(DATA), sha256=SHA)
    assert out.read_bytes() == DATA


@respx.mock
async def test_download_416_starts_over(client: WorkerClient, tmp_path: Path) -> None:
    respx.get(f"{BASE}/files/F1").mock(
        side_effect=[
            httpx.Response(200, stream=_BrokenStream(DATA[:1000])),
            httpx.Response(416),
            httpx.Response(200, content=DATA),
        ]
    )
    out = await client.download(f"{BASE}/files/F1", tmp_path / "in.bin", size=len(DATA), sha256=SHA)
    assert out.read_bytes() == DATA


@respx.mock
async def test_download_checksum_and_size_are_verified(client: WorkerClient, tmp_path: Path) -> None:
    respx.get(f"{BASE}/files/F1").respond(content=DATA)
    with pytest.raises(TransientError, match="checksum mismatch"):
        await client.download(f"{BASE}/files/F1", tmp_path / "a", size=len(DATA), sha256="0" * 64)
    with pytest.raises(TransientError, match="expected 10"):
        await client.download(f"{BASE}/files/F1", tmp_path / "b", size=10)


@respx.mock
async def test_download_gives_up_after_retries(client: WorkerClient, tmp_path: Path) -> None:
    route = respx.get(f"{BASE}/files/F1").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ServerUnreachable):
        await client.download(f"{BASE}/files/F1", tmp_path / "a", size=len(DATA))
    assert route.call_count == 4


@respx.mock
async def test_download_4xx_become_processing_errors(client: WorkerClient, tmp_path: Path) -> None:
    route = respx.get(f"{BASE}/files/F1").mock(
        side_effect=[_err(404, "file_not_found"), _err(403, "bad_signature")]
    )
    with pytest.raises(BadInput, match="no longer on the server"):
        await client.download(f"{BASE}/files/F1", tmp_path / "a")
    with pytest.raises(TransientError, match="expired"):
        await client.download(f"{BASE}/files/F1", tmp_path / "a")
    assert route.call_count == 2


def _stored(request: httpx.Request) -> httpx.Response:
    data = request.read()
    name = request.url.params["name"]
    return httpx.Response(
        200,
        json={
            "job_id": request.url.params["job_id"],
            "name": name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "mime": "image/jpeg",
        },
    )


@respx.mock
async def test_upload_artifact_streams_the_file_with_lease_and_length(
    client: WorkerClient, tmp_path: Path
) -> None:
    path = tmp_path / "thumbnail.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"x" * 3_000_000)  # several upload chunks
    route = respx.post(f"{BASE}/worker/artifact").mock(side_effect=_stored)
    got = await client.upload_artifact("J1", "TOK", path, "thumbnail.jpg")
    assert got.size == path.stat().st_size and got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    req = route.calls.last.request
    assert dict(req.url.params) == {"job_id": "J1", "name": "thumbnail.jpg"}  # no token in the URL
    assert req.headers["x-lease-token"] == "TOK"
    assert req.headers["content-length"] == str(path.stat().st_size)
    assert req.headers["content-type"] == "application/octet-stream"


@respx.mock
async def test_upload_artifact_retries_sending_the_whole_file(client: WorkerClient, tmp_path: Path) -> None:
    path = tmp_path / "k.jpg"
    path.write_bytes(b"frame bytes")
    seen: list[bytes] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        if len(seen) == 1:
            raise httpx.WriteError("connection reset mid-upload")
        if len(seen) == 2:
            return _err(503, "internal_error")
        return _stored(request)

    respx.post(f"{BASE}/worker/artifact").mock(side_effect=flaky)
    assert (await client.upload_artifact("J1", "TOK", path, "k.jpg")).size == 11
    assert seen == [b"frame bytes"] * 3


@respx.mock
@pytest.mark.parametrize("code", ["stale_lease", "job_canceled"])
async def test_upload_artifact_409_is_lease_lost(client: WorkerClient, tmp_path: Path, code: str) -> None:
    path = tmp_path / "k.jpg"
    path.write_bytes(b"x")
    route = respx.post(f"{BASE}/worker/artifact").mock(return_value=_err(409, code))
    with pytest.raises(LeaseLost) as err:
        await client.upload_artifact("J1", "TOK", path, "k.jpg")
    assert err.value.canceled is (code == "job_canceled") and route.call_count == 1


@respx.mock
async def test_upload_artifact_too_large_is_rejected_once(client: WorkerClient, tmp_path: Path) -> None:
    path = tmp_path / "k.jpg"
    path.write_bytes(b"x")
    route = respx.post(f"{BASE}/worker/artifact").mock(return_value=_err(413, "artifact_too_large"))
    with pytest.raises(ServerRejected) as err:
        await client.upload_artifact("J1", "TOK", path, "k.jpg")
    assert err.value.code == "artifact_too_large" and not isinstance(err.value, LeaseLost)
    assert route.call_count == 1


@respx.mock
async def test_completions_of_the_same_moment_share_one_request(client: WorkerClient) -> None:
    import asyncio
    import json

    from worker.client import LeaseLost

    def answer(request: httpx.Request) -> httpx.Response:
        results = json.loads(request.content)["results"]
        assert [r["job_id"] for r in results] == ["J1", "J2", "J3"]
        stale = {"code": "stale_lease", "message": "not yours"}
        return httpx.Response(
            200,
            json={
                "results": [
                    {"job_id": "J1", "status": "succeeded"},
                    {"job_id": "J2", "error": stale},
                    {"job_id": "J3", "status": "running"},
                ]
            },
        )

    batch = respx.post(f"{BASE}/worker/complete-batch").mock(side_effect=answer)
    single = respx.post(f"{BASE}/worker/complete").mock(return_value=httpx.Response(500))
    got = await asyncio.gather(
        *(client.complete(j, f"tok-{j}", "# md", {}) for j in ("J1", "J2", "J3")), return_exceptions=True
    )
    assert batch.call_count == 1 and single.call_count == 0
    assert got[0].status == "succeeded" and got[2].status == "running"  # type: ignore[union-attr]
    assert isinstance(got[1], LeaseLost) and got[1].code == "stale_lease"


@respx.mock
async def test_batched_completions_fall_back_to_one_request_each_on_an_older_server(
    client: WorkerClient,
) -> None:
    import asyncio

    respx.post(f"{BASE}/worker/complete-batch").mock(
        return_value=httpx.Response(404, json={"code": "not_found", "message": "no such route"})
    )
    single = respx.post(f"{BASE}/worker/complete").mock(
        side_effect=lambda r: httpx.Response(200, json={"job_id": "x", "status": "succeeded"})
    )
    got = await asyncio.gather(*(client.complete(j, "t", "# md", {}) for j in ("J1", "J2")))
    assert single.call_count == 2 and [g.status for g in got] == ["succeeded", "succeeded"]


def _batch_stored(request: httpx.Request) -> httpx.Response:
    """The server's answer to a complete-batch: every result stored."""
    results = json.loads(request.content)["results"]
    assert len(results) <= 100  # the server refuses more (MAX_RESULTS_PER_REQUEST)
    return httpx.Response(
        200, json={"results": [{"job_id": r["job_id"], "status": "succeeded"} for r in results]}
    )


@respx.mock
async def test_a_batch_holds_at_most_100_results(client: WorkerClient) -> None:
    """150 results of the same moment go as 100 + 50, every caller answered. Break caught: one
    batch of 150 (the server answers 422 and, before, every result was dropped)."""
    import asyncio

    batch = respx.post(f"{BASE}/worker/complete-batch").mock(side_effect=_batch_stored)
    single = respx.post(f"{BASE}/worker/complete").mock(return_value=httpx.Response(500))
    got = await asyncio.gather(*(client.complete(f"J{i}", "t", "# md", {}) for i in range(150)))
    assert sorted(len(json.loads(c.request.content)["results"]) for c in batch.calls) == [50, 100]
    assert single.call_count == 0 and {g.status for g in got} == {"succeeded"}


@respx.mock
async def test_a_batch_refused_as_a_whole_goes_again_one_result_each(client: WorkerClient) -> None:
    """A batch answered 413 (the server's body limit) is not a verdict on each result: they go one
    per request and each caller hears its own. Break caught: 413 failing every caller."""
    import asyncio

    from worker.client import LeaseLost

    respx.post(f"{BASE}/worker/complete-batch").mock(
        return_value=httpx.Response(413, json={"code": "payload_too_large", "message": "too large"})
    )

    def one(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["job_id"] == "J2":
            return _err(409, "stale_lease")
        return httpx.Response(200, json={"job_id": body["job_id"], "status": "succeeded"})

    single = respx.post(f"{BASE}/worker/complete").mock(side_effect=one)
    got = await asyncio.gather(
        *(client.complete(j, "t", "# md", {}) for j in ("J1", "J2", "J3")), return_exceptions=True
    )
    assert single.call_count == 3
    assert got[0].status == "succeeded" and got[2].status == "succeeded"  # type: ignore[union-attr]
    assert isinstance(got[1], LeaseLost)


@respx.mock
async def test_a_large_result_goes_alone(client: WorkerClient) -> None:
    """A result above RIDE_MAX_CHARS never shares a request: the server's verdict on its size is
    its own. Break caught: batching it with the small ones."""
    import asyncio

    from worker.completions import RIDE_MAX_CHARS

    batch = respx.post(f"{BASE}/worker/complete-batch").mock(side_effect=_batch_stored)
    single = respx.post(f"{BASE}/worker/complete").mock(
        side_effect=lambda r: httpx.Response(200, json={"job_id": "BIG", "status": "succeeded"})
    )
    big = "x" * (RIDE_MAX_CHARS + 1)
    await asyncio.gather(
        client.complete("J1", "t", "# md", {}),
        client.complete("BIG", "t", big, {}),
        client.complete("J3", "t", "# md", {}),
    )
    assert single.call_count == 1 and json.loads(single.calls[0].request.content)["job_id"] == "BIG"
    assert [r["job_id"] for r in json.loads(batch.calls[0].request.content)["results"]] == ["J1", "J3"]


def _riders(client: WorkerClient, n: int) -> list[asyncio.Future[Any]]:
    """``n`` results waiting for the next claim (the runner opened riding), as the jobs' tasks."""
    client.completions.riding = client.completions.ride_open = True
    return [asyncio.ensure_future(client.complete(f"R{i}", "t", "# md", {})) for i in range(n)]


@respx.mock
async def test_a_claim_carries_at_most_100_results(client: WorkerClient) -> None:
    """150 results waiting: the claim carries 100, the next request the other 50. Break caught:
    every waiting result on one claim (422, and before, all 150 dropped)."""

    def claim(request: httpx.Request) -> httpx.Response:
        results = json.loads(request.content).get("results", [])
        assert len(results) <= 100
        return httpx.Response(
            200,
            json={"jobs": [], "results": [{"job_id": r["job_id"], "status": "succeeded"} for r in results]},
        )

    route = respx.post(f"{BASE}/worker/claim").mock(side_effect=claim)
    respx.post(f"{BASE}/worker/complete-batch").mock(side_effect=_batch_stored)
    tasks = _riders(client, 150)
    await asyncio.sleep(0)
    req = ClaimRequest(worker_id="w1", content_types=["echo"], wait_s=0.1, claim_id="c3")  # type: ignore[list-item]
    assert await client.claim(req, client.completions.take_riders()) == []
    assert len(json.loads(route.calls[0].request.content)["results"]) == 100
    assert client.completions.waiting()  # the other 50 wait for the next request
    client.completions.send_waiting()
    got = await asyncio.gather(*tasks)
    assert len(got) == 150 and {g.status for g in got} == {"succeeded"}


@respx.mock
async def test_results_on_a_claim_refused_as_a_whole_go_again_one_each(client: WorkerClient) -> None:
    """A claim carrying results answered 413: the claim fails, its results are sent one per request
    and each caller hears its own verdict. Break caught: the results failing with the claim."""
    respx.post(f"{BASE}/worker/claim").mock(
        return_value=httpx.Response(413, json={"code": "payload_too_large", "message": "too large"})
    )
    single = respx.post(f"{BASE}/worker/complete").mock(
        side_effect=lambda r: httpx.Response(200, json={"job_id": "x", "status": "succeeded"})
    )
    tasks = _riders(client, 3)
    await asyncio.sleep(0)
    req = ClaimRequest(worker_id="w1", content_types=["echo"], wait_s=0.1, claim_id="c4")  # type: ignore[list-item]
    with pytest.raises(ServerRejected):
        await client.claim(req, client.completions.take_riders())
    got = await asyncio.gather(*tasks)
    assert single.call_count == 3 and {g.status for g in got} == {"succeeded"}


def test_a_batch_holds_at_most_batch_max_chars_of_markdown() -> None:
    """Results of RIDE_MAX_CHARS each: one request takes as many as fit BATCH_MAX_CHARS, and a
    single larger one still goes. Break caught: dropping the size bound (100 x 64 KiB = 6.4 MiB)."""
    from protocol.models import CompleteRequest
    from worker.completions import BATCH_MAX_CHARS, RIDE_MAX_CHARS, take_batch

    def body(i: int, size: int) -> Any:
        return (CompleteRequest(job_id=f"J{i}", lease_token="t", markdown="x" * size), None)

    pending = [body(i, RIDE_MAX_CHARS) for i in range(70)]
    first = take_batch(pending)
    assert len(first) == BATCH_MAX_CHARS // RIDE_MAX_CHARS and len(pending) == 70 - len(first)
    assert len(take_batch(pending)) == 70 - len(first) and pending == []
    huge = [body(0, BATCH_MAX_CHARS + 1), body(1, 10)]
    assert len(take_batch(huge)) == 1 and len(huge) == 1
