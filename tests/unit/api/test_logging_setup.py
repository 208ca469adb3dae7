"""Server logging: timestamps, request ids in and out, task ids, JSON, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from api.logging_setup import (
    ContextFilter,
    JsonFormatter,
    RequestContextMiddleware,
    TextFormatter,
    redact,
    task_context,
)

TASK = "0" * 14 + "ab" * 9
log = logging.getLogger("morag.test")


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.get("/api/v1/status/{task_id}")
    async def status(task_id: str) -> dict[str, str]:
        log.info("looking at the task")
        return {"ok": task_id}

    @app.post("/worker/heartbeat")
    async def heartbeat(request: Request) -> dict[str, str]:
        await request.json()
        log.info("heartbeat received")
        return {}

    @app.get("/files/x")
    async def files(request: Request) -> dict[str, str]:
        log.info("download for %s", request.headers.get("authorization"))
        return {}

    return app


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if getattr(request, "param", "text") == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


async def _get(method: str, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, **kw)  # type: ignore[arg-type]


async def test_text_lines_have_a_timestamp_the_request_id_and_the_task_id(captured: io.StringIO) -> None:
    r = await _get("GET", f"/api/v1/status/{TASK}", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    line = next(x for x in captured.getvalue().splitlines() if "looking at the task" in x)
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.match(stamp + rf" INFO morag.test \[req=abc-123 task={TASK}\] ", line)
    access = next(x for x in captured.getvalue().splitlines() if "morag.access" in x)
    assert f'"GET /api/v1/status/{TASK}" 200' in access and "req=abc-123" in access


async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(captured: io.StringIO) -> None:
    r1 = await _get("GET", f"/api/v1/status/{TASK}")
    r2 = await _get("GET", f"/api/v1/status/{TASK}", headers={"X-Request-ID": "bad id\nINFO forged"})
    for r in (r1, r2):
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert "forged" not in captured.getvalue()


async def test_a_worker_body_names_the_task_of_its_lines(captured: io.StringIO) -> None:
    await _get("POST", "/worker/heartbeat", json={"job_id": TASK, "lease_token": "secret-lease"})
    line = next(x for x in captured.getvalue().splitlines() if "heartbeat received" in x)
    assert f"task={TASK}" in line


async def test_secrets_never_reach_the_log(captured: io.StringIO) -> None:
    await _get(
        "GET",
        "/files/x?expires=1&sig=SIGSECRET&token=TOKSECRET",
        headers={"Authorization": "Bearer mrg_KEYSECRET"},
    )
    text = captured.getvalue()
    assert "SIGSECRET" not in text and "TOKSECRET" not in text and "KEYSECRET" not in text
    assert "sig=[redacted]" in text and "Bearer [redacted]" in text and "expires=1" in text


@pytest.mark.parametrize("captured", ["json"], indirect=True)
async def test_json_lines_carry_the_ids_as_fields(captured: io.StringIO) -> None:
    await _get("GET", f"/api/v1/status/{TASK}", headers={"X-Request-ID": "r-1"})
    records = [json.loads(x) for x in captured.getvalue().splitlines()]
    mine = next(r for r in records if r["message"] == "looking at the task")
    assert mine["request_id"] == "r-1" and mine["task_id"] == TASK and mine["level"] == "INFO"
    assert mine["ts"].endswith("+00:00")


def test_task_context_marks_every_line_inside_it(captured: io.StringIO) -> None:
    with task_context("t-42"):
        log.info("inside")
    log.info("outside")
    inside, outside = captured.getvalue().splitlines()[-2:]
    assert "task=t-42" in inside and "task=" not in outside


def test_redact_keeps_harmless_text() -> None:
    assert redact("GET /files/a?expires=5&sig=abc&x=1") == "GET /files/a?expires=5&sig=[redacted]&x=1"
    assert redact("authorization: Bearer abc.def") == "authorization: Bearer [redacted]"
    assert redact("a token bucket") == "a token bucket"
