"""The fast routes (api/fastpath.py): the same answers as FastAPI's own path, byte for byte, for good
and bad requests alike; the path is really taken; what it cannot serve stops the app's build."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel

from api import fastpath
from api.auth import worker_access
from api.fastpath import FastRoutes, NotServable, plan_routes
from api.keystore import Principal
from tests.integration.api.conftest import Env, make_settings, raw_post, running_env

_IDS = re.compile(r"[0-9a-f]{32}")
_TOKENS = re.compile(r'"(lease_token|download_url|lease_expires_at|x-request-id)":"[^"]*"')

ECHO = {"url": "https://example.org/a", "content_type": "echo"}
LEASE = {"job_id": "x", "lease_token": "y"}
J = "application/json"

#: (path, key, query, body: dict -> JSON, bytes -> as is, content type, served by the fast path)
CASES: list[tuple[str, str, dict[str, Any] | None, Any, str, bool]] = [
    ("/process/url", "alice", {"wait_s": "0"}, ECHO, J, True),
    ("/process/url", "alice", {"wait_s": "0"}, ECHO, "application/json; charset=utf-8", True),
    ("/process/url", "alice", None, {**ECHO, "wait_s": 0}, J, True),
    ("/process/url", "alice", {"wait_s": "-1"}, ECHO, J, False),
    ("/process/url", "alice", {"wait_s": "soon"}, ECHO, J, False),
    ("/process/url", "alice", {"wait_s": ""}, ECHO, J, False),
    ("/process/url", "alice", {"wait_s": "0"}, b'{"url": ', J, False),
    ("/process/url", "alice", {"wait_s": "0"}, b"\xff\xfe", J, False),
    ("/process/url", "alice", {"wait_s": "0"}, b"", J, False),
    ("/process/url", "alice", {"wait_s": "0"}, json.dumps(ECHO).encode(), "text/plain", False),
    ("/process/url", "alice", {"wait_s": "0"}, json.dumps(ECHO).encode(), "", False),
    ("/process/url", "alice", {"wait_s": "0"}, {"content_type": "echo"}, J, False),
    ("/process/url", "alice", {"wait_s": "0"}, {**ECHO, "surprise": 1}, J, False),
    ("/process/url", "alice", {"wait_s": "0"}, [ECHO], J, False),
    ("/process/url", "alice", {"wait_s": "0"}, {**ECHO, "url": "ftp://example.org/a"}, J, True),
    ("/process/url", "alice", {"wait_s": "0"}, {**ECHO, "options": {"x": "a\u0000b"}}, J, False),
    ("/process/url", "nobody", {"wait_s": "0"}, ECHO, J, True),
    ("/process/url", "worker", {"wait_s": "0"}, ECHO, J, True),
    ("/api/v1/ingest/url", "alice", None, ECHO, J, True),
    ("/api/v1/ingest/url", "alice", None, {"url": "http://127.0.0.1/x"}, J, True),
    ("/worker/claim", "worker", None, {"worker_id": "w", "content_types": ["web"], "wait_s": 0}, J, True),
    ("/worker/claim", "worker", None, {"worker_id": "w", "content_types": ["echo"], "wait_s": 0}, J, True),
    ("/worker/claim", "worker", None, {"worker_id": "w b", "content_types": ["echo"]}, J, False),
    ("/worker/claim", "alice", None, {"worker_id": "w", "content_types": ["echo"], "wait_s": 0}, J, True),
    ("/worker/complete", "worker", None, {**LEASE, "markdown": "m"}, J, True),
    ("/worker/complete-batch", "worker", None, {"results": [{**LEASE, "markdown": "m"}]}, J, True),
    ("/worker/heartbeat", "worker", None, {**LEASE, "progress": 0.5}, J, True),
    ("/worker/fail", "worker", None, {**LEASE, "error": "e"}, J, True),
    ("/worker/fail", "worker", None, {**LEASE, "error": "e", "error_class": "nope"}, J, False),
]  # fmt: skip


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The route path of every request the fast path served, in order."""
    served: list[str] = []
    real = FastRoutes._answer

    async def counting(*a: Any) -> Any:
        served.append(a[0].route.path)
        return await real(*a)

    monkeypatch.setattr(FastRoutes, "_answer", staticmethod(counting))
    return served


def _normalized(text: str) -> str:
    return _TOKENS.sub(r'"\1":"-"', _IDS.sub("ID", text))


async def _answers(env: Env, taken: list[str]) -> list[tuple[int, str, str | None, str | None, bool]]:
    """(status, body, content type, Location, fast path taken) of every case, in order."""
    keys = {"alice": env.alice, "worker": env.worker, "nobody": {"Authorization": "Bearer nope"}}
    out = []
    for path, who, query, body, ctype, _ in CASES:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**keys[who], "content-type": ctype} if ctype else dict(keys[who])
        before = len(taken)
        resp = await env.client.post(path, params=query, content=raw, headers=headers)
        if not ctype:
            assert "content-type" not in resp.request.headers
        location = resp.headers.get("location")
        where = location and _IDS.sub("ID", location)
        out.append(
            (
                resp.status_code,
                _normalized(resp.text),
                resp.headers.get("content-type"),
                where,
                len(taken) > before,
            )
        )
    return out


async def test_fast_and_fastapi_paths_answer_the_same(tmp_path: Path, taken: list[str]) -> None:
    answers = {}
    for fast in (True, False):
        async with running_env(make_settings(tmp_path / str(fast), fast_routes=fast)) as env:
            answers[fast] = await _answers(env, taken)
            metrics = (await env.client.get("/metrics")).text
            assert 'route="/process/url"' in metrics and 'route="/worker/claim"' in metrics
        if fast:  # every hot route was served here
            assert set(taken) == {p for _, p in fastpath.HOT_ROUTES}
    # well-formed requests go the fast way, malformed ones through FastAPI; never with the setting off
    assert [a[4] for a in answers[True]] == [c[5] for c in CASES]
    assert not any(a[4] for a in answers[False])
    for case, fast, slow in zip(CASES, answers[True], answers[False], strict=True):
        assert fast[:4] == slow[:4], case
    assert [a[0] for a in answers[True]] == [
        202, 202, 202, 422, 422, 422, 422, 422, 422, 422, 422, 422, 422, 422, 400, 422, 401, 403,
        202, 202, 200, 200, 422, 403, 409, 200, 409, 409, 422,
    ]  # fmt: skip
    assert answers[True][0][3] == "/api/v1/status/ID" and answers[True][18][3] == "/api/v1/status/ID"


async def test_a_leased_job_completes_through_the_fast_path(env: Env) -> None:
    created = await env.client.post("/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)
    assert created.status_code == 202
    claim = {"worker_id": "w", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 1}
    (job,) = (await env.client.post("/worker/claim", headers=env.worker, json=claim)).json()["jobs"]
    lease = {"job_id": job["job_id"], "lease_token": job["lease_token"]}
    beat = await env.client.post("/worker/heartbeat", headers=env.worker, json={**lease, "progress": 0.5})
    assert beat.status_code == 200 and beat.json()["canceled"] is False
    done = await env.client.post("/worker/complete", headers=env.worker, json={**lease, "markdown": "# ok"})
    assert done.json() == {"job_id": job["job_id"], "status": "succeeded"}
    status = await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)
    assert status.json()["status"] == "succeeded"


async def test_behind_a_proxy_prefix_the_fast_path_still_serves(env: Env, taken: list[str]) -> None:
    transport = httpx.ASGITransport(app=env.app, root_path="/morag")  # uvicorn --root-path /morag
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        resp = await client.post("/morag/process/url", params={"wait_s": 0}, headers=env.alice, json=ECHO)
        assert resp.status_code == 202, resp.text
        other = await client.post("/morag/process/urls", headers=env.alice, json=ECHO)
        assert other.status_code == 404  # not a hot route: FastAPI's answer
    assert taken == ["/process/url"]


async def test_a_body_in_chunks_and_a_second_content_type(tmp_path: Path, taken: list[str]) -> None:
    body = json.dumps({**ECHO, "options": {"pad": "x" * 60_000}}).encode()
    answers = {}
    for fast in (True, False):
        async with running_env(make_settings(tmp_path / str(fast), fast_routes=fast)) as env:
            # The body as a client streams it: several ASGI messages, not one.
            parts = [body[i : i + 16384] for i in range(0, len(body), 16384)]
            auth = env.alice["Authorization"].encode()
            headers = [(b"authorization", auth), (b"content-type", b"application/json")]
            sent = await raw_post(env.app, "/process/url", headers, parts, query=b"wait_s=0")
            assert len(parts) == 4
            assert sent[0]["status"] == 202, sent
            # Two content types, the first not JSON: Starlette reads the first, so FastAPI answers.
            two = [("content-type", "text/plain"), ("content-type", "application/json"), *env.alice.items()]
            resp = await env.client.post(
                "/process/url", params={"wait_s": 0}, content=json.dumps(ECHO), headers=two
            )
            answers[fast] = (resp.status_code, resp.json()["code"])
        if fast:
            assert taken == ["/process/url"]  # the chunked one; the two-type one went to FastAPI
    assert answers[True] == answers[False] == (422, "validation_error")


async def test_dependency_overrides_send_requests_through_fastapi(env: Env) -> None:
    seen = []

    async def fake_worker(request: Request) -> Principal:
        seen.append(request.url.path)
        return await worker_access(request)

    env.app.dependency_overrides[worker_access] = fake_worker
    try:
        claim = {"worker_id": "w", "content_types": ["echo"], "wait_s": 0}
        assert (await env.client.post("/worker/claim", headers=env.worker, json=claim)).status_code == 204
    finally:
        env.app.dependency_overrides.clear()
    assert seen == ["/worker/claim"]


class Small(BaseModel):
    n: int


def _app_with(route: Any, path: str = "/hot") -> FastAPI:
    app = FastAPI()
    router = APIRouter()
    router.post(path, response_model=dict)(route)
    app.include_router(router)
    return app


def test_a_route_the_fast_path_cannot_serve_stops_the_build(tmp_path: Path) -> None:
    def sync_dep(request: Request) -> int:  # a plain function: FastAPI would run it in a thread
        return 1

    async def with_sync_dep(body: Small, n: int = Depends(sync_dep)) -> dict[str, int]:
        return {}

    async def with_path_param(body: Small, x: str) -> dict[str, int]:
        return {}

    async def with_list_query(body: Small, x: list[str] = Query([])) -> dict[str, int]:
        return {}

    async def with_dict_body(body: dict[str, int]) -> dict[str, int]:
        return {}

    async def fine(body: Small, request: Request) -> dict[str, int]:
        return {}

    for endpoint, why in ((with_sync_dep, "coroutine"), (with_dict_body, "pydantic model")):
        with pytest.raises(NotServable, match=why):
            plan_routes(_app_with(endpoint), [("POST", "/hot")])
    with pytest.raises(NotServable, match="path, header or cookie"):
        plan_routes(_app_with(with_path_param, "/hot/{x}"), [("POST", "/hot/{x}")])
    with pytest.raises(NotServable, match="plain scalar"):
        plan_routes(_app_with(with_list_query), [("POST", "/hot")])
    assert plan_routes(_app_with(fine), [("POST", "/hot")])[("POST", "/hot")].request_name == "request"
    with pytest.raises(NotServable, match="0 routes"):
        plan_routes(_app_with(fine), [("POST", "/cold")])
    from api.app import create_app

    app = create_app(make_settings(tmp_path))  # the real app builds: every hot route is servable
    assert any(m.cls is FastRoutes and m.kwargs["routes"] for m in app.user_middleware)
