"""Hostile bodies on SQLite and PostgreSQL (findings #3 and #4): oversized JSON is refused with
413 before it is read past the limit and nothing is stored; stored fields have their own limits;
unparseable URLs and absurd multipart boundaries are 4xx, never 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.conftest import Env, claim, make_settings, running_env

URL = "https://example.com/page"
LIMIT = 64 * 1024


@pytest.fixture
async def db_env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=0,
        process_wait_default_s=0,
        process_wait_max_s=0,
        max_json_bytes=LIMIT,
        max_batch_json_bytes=LIMIT,
        max_worker_json_bytes=4 * LIMIT,
        max_options_bytes=8 * 1024,
        max_metadata_bytes=8 * 1024,
    )
    async with running_env(settings, raise_app_exceptions=False) as env:
        yield env


def _body(size: int, **extra: Any) -> bytes:
    return json.dumps({"url": URL, "content_type": "web", "options": {"x": "y" * size}, **extra}).encode()


@pytest.mark.parametrize("path", ["/process/url", "/api/v1/ingest/url", "/api/v1/ingest/batch"])
async def test_declared_oversize_json_refused_unread(db_env: Env, path: str) -> None:
    before = await db_env.snapshot()
    consumed = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal consumed
        for _ in range(64):  # 4 MiB in all
            consumed += 1
            yield b" " * 65536

    headers = {**db_env.alice, "content-type": "application/json", "content-length": str(64 * 65536)}
    resp = await db_env.client.post(path, content=stream(), headers=headers)
    assert resp.status_code == 413 and resp.json()["code"] == "body_too_large", resp.text
    assert consumed <= 1  # answered from the header: (almost) nothing of the body was read
    assert await db_env.snapshot() == before


@pytest.mark.parametrize("path", ["/process/url", "/api/v1/ingest/url"])
async def test_chunked_oversize_json_stops_at_the_limit(db_env: Env, path: str) -> None:
    before = await db_env.snapshot()
    consumed = 0

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal consumed
        for _ in range(64):
            consumed += 1
            yield b" " * 8192

    headers = {**db_env.alice, "content-type": "application/json"}
    resp = await db_env.client.post(path, content=stream(), headers=headers)
    assert resp.status_code == 413 and resp.json()["code"] == "body_too_large", resp.text
    assert consumed * 8192 <= LIMIT + 2 * 8192  # stopped at the limit, not at 512 KiB
    assert await db_env.snapshot() == before


async def test_stored_fields_have_their_own_limits(db_env: Env) -> None:
    before = await db_env.snapshot()
    for body in (_body(9 * 1024), _body(10, metadata={"m": "z" * 9 * 1024})):
        resp = await db_env.client.post(
            "/api/v1/ingest/url", content=body, headers={**db_env.alice, "content-type": "application/json"}
        )
        assert resp.status_code == 413 and resp.json()["code"] == "field_too_large", resp.text
    json_headers = {**db_env.alice, "content-type": "application/json"}
    resp = await db_env.client.post("/process/url", content=_body(9 * 1024), headers=json_headers)
    assert resp.status_code == 413 and resp.json()["code"] == "field_too_large", resp.text
    assert await db_env.snapshot() == before
    ok = await db_env.client.post("/api/v1/ingest/url", content=_body(1024), headers=json_headers)
    assert ok.status_code == 202, ok.text


async def test_worker_routes_have_a_larger_limit(db_env: Env) -> None:
    body = {"url": URL, "content_type": "echo"}
    resp = await db_env.client.post("/api/v1/ingest/url", json=body, headers=db_env.alice)
    assert resp.status_code == 202, resp.text
    [job] = await claim(db_env, ["echo", "web"], wait_s=0)
    big = {"job_id": job["job_id"], "lease_token": job["lease_token"], "metadata": {}}
    too_big = await db_env.client.post(
        "/worker/complete", headers=db_env.worker, json={**big, "markdown": "a" * (4 * LIMIT + 1)}
    )
    assert too_big.status_code == 413 and too_big.json()["code"] == "body_too_large"
    fits = await db_env.client.post(
        "/worker/complete", headers=db_env.worker, json={**big, "markdown": "a" * (3 * LIMIT)}
    )
    assert fits.status_code == 200, fits.text  # larger than a client body may be, within the worker's


@pytest.mark.parametrize(
    ("path", "field", "code"),
    [
        ("/process/url", "url", "invalid_url"),
        ("/api/v1/ingest/url", "url", "invalid_url"),
        ("/api/v1/ingest/url", "webhook_url", "webhook_invalid_url"),
    ],
)
async def test_unparseable_url_is_400(db_env: Env, path: str, field: str, code: str) -> None:
    body = {"url": URL, "content_type": "web", field: "http://[::1"}
    resp = await db_env.client.post(path, json=body, headers=db_env.alice)
    assert resp.status_code == 400 and resp.json()["code"] == code, resp.text


async def test_unparseable_webhook_in_batch_is_400(db_env: Env) -> None:
    body = {"items": [{"url": URL, "content_type": "web", "webhook_url": "http://[::1"}]}
    resp = await db_env.client.post("/api/v1/ingest/batch", json=body, headers=db_env.alice)
    assert resp.status_code == 400 and resp.json()["code"] == "webhook_invalid_url", resp.text


@pytest.mark.parametrize("path", ["/api/v1/ingest/file", "/process/file"])
async def test_overlong_multipart_boundary_is_400(db_env: Env, path: str) -> None:
    b = "x" * 300
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--{b}--\r\n'
    ).encode()
    headers = {**db_env.alice, "content-type": f"multipart/form-data; boundary={b}"}
    resp = await db_env.client.post(path, content=body, headers=headers)
    assert resp.status_code == 400 and resp.json()["code"] == "malformed_multipart", resp.text
