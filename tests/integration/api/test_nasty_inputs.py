"""Inputs a generator rarely makes, on SQLite and PostgreSQL: NUL bytes, NaN, deep nesting, huge
bodies, non-UTF-8 form fields, lying Content-Length. Each must be a 4xx with the error shape
(never a 500), and a job that was accepted must stay claimable and readable."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api.conftest import Env, check_error, make_settings, running_env

URL = "https://example.com/page"
BOUNDARY = "nasty-boundary-1f2e"


@pytest.fixture
async def db_env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """The `env` of conftest, on each backend (SQLite, PostgreSQL), with long polls off."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=0,
        process_wait_default_s=0,
        process_wait_max_s=0,
    )
    async with running_env(settings, raise_app_exceptions=False) as env:
        yield env


def _json(env: Env, raw: str | bytes) -> dict[str, Any]:
    body = raw.encode() if isinstance(raw, str) else raw
    return {"content": body, "headers": {**env.alice, "content-type": "application/json"}}


def _multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """(Content-Disposition params, value) parts, written by hand so any bytes can go in."""
    out = b""
    for disposition, value in parts:
        out += f"--{BOUNDARY}\r\n".encode() + b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n"
        out += value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _form_headers(env: Env) -> dict[str, str]:
    return {**env.alice, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}


async def _claim_all(env: Env) -> httpx.Response:
    return await env.client.post(
        "/worker/claim",
        headers=env.worker,
        json={
            "worker_id": "nasty",
            "lanes": ["gpu", "cpu"],
            "content_types": ["web", "document", "youtube", "audio", "video", "image", "echo"],
            "max_jobs": 100,
            "wait_s": 0,
        },
    )


NUL_BODIES = {
    "/api/v1/ingest/url": [
        {"url": URL + "\x00"},
        {"url": URL, "document_id": "doc\x00"},
        {"url": URL, "options": {"k\x00": 1}},
        {"url": URL, "metadata": {"k": ["v\x00"]}},
        {"url": URL, "webhook_url": "http://127.0.0.1/\x00"},
    ],
    "/api/v1/ingest/batch": [{"items": [{"url": URL}, {"url": URL + "\x00"}]}],
    "/process/url": [{"url": URL + "\x00"}, {"url": URL, "options": {"a": "\x00"}}],
    "/api/v1/search": [{"query": "a\x00b"}, {"query": "a", "filters": {"k": "\x00"}}],
}


@pytest.mark.parametrize("path", sorted(NUL_BODIES))
async def test_nul_in_json_bodies_is_422_on_both_backends(db_env: Env, path: str) -> None:
    """PostgreSQL refuses NUL in text: every backend answers 422 before the store sees it."""
    before = await db_env.snapshot()
    for body in NUL_BODIES[path]:
        resp = await db_env.client.post(path, **_json(db_env, json.dumps(body)))
        assert "NUL" in check_error(resp, path, 422, "validation_error")["message"]
    assert await db_env.snapshot() == before


WORKER_NUL = {
    "/worker/claim": {"worker_id": "w", "content_types": ["web"], "claim_id": "c\x00", "wait_s": 0},
    "/worker/heartbeat": {"job_id": "j\x00", "lease_token": "t", "message": "m"},
    "/worker/complete": {"job_id": "j", "lease_token": "t\x00", "markdown": "m"},
    "/worker/fail": {"job_id": "j", "lease_token": "t", "error": "e\x00"},
}


@pytest.mark.parametrize("path", sorted(WORKER_NUL))
async def test_nul_in_worker_bodies_is_422(db_env: Env, path: str) -> None:
    resp = await db_env.client.post(path, headers=db_env.worker, json=WORKER_NUL[path])
    check_error(resp, path, 422, "validation_error")


@pytest.mark.parametrize(
    ("method", "url", "spec"),
    [
        ("GET", "/api/v1/status/a%00b", "/api/v1/status/{task_id}"),
        ("GET", "/api/v1/status/?cursor=a%00b", "/api/v1/status/"),
        ("GET", "/api/v1/ingest/batch/a%00b", "/api/v1/ingest/batch/{batch_id}"),
        ("DELETE", "/api/v1/ingest/a%00b", "/api/v1/ingest/{task_id}"),
        ("DELETE", "/api/v1/cookies/a%00b", "/api/v1/cookies/{domain}"),
        ("DELETE", "/api/v1/documents/a%00b", "/api/v1/documents/{document_id}"),
    ],
)
async def test_nul_in_path_or_query_is_422(db_env: Env, method: str, url: str, spec: str) -> None:
    """Path and query values go into WHERE clauses: a NUL would be a driver error on PostgreSQL."""
    resp = await db_env.client.request(method, url, headers=db_env.alice)
    check_error(resp, spec, 422, "invalid_text")


async def test_nul_in_worker_download_link_is_422(db_env: Env) -> None:
    resp = await db_env.client.get("/files/f%00?job=j%00&exp=1&sig=s", headers=db_env.worker)
    check_error(resp, "/files/{file_id}", 422, "invalid_text")


async def test_nul_in_cookies_file_is_400(db_env: Env) -> None:
    for line in (b"exam\x00ple.com\tTRUE\t/\tFALSE\t0\tn\tv", b".example.com\tTRUE\t/\tFALSE\t0\tn\tv\x00"):
        resp = await db_env.client.put("/api/v1/cookies", content=line, headers=db_env.alice)
        check_error(resp, "/api/v1/cookies", 400, "invalid_cookies")


async def test_nul_in_multipart_filename_and_fields(db_env: Env) -> None:
    before = await db_env.snapshot()
    bad_name = _multipart([(b'name="file"; filename="a\x00.txt"', b"hello")])
    resp = await db_env.client.post("/api/v1/ingest/file", content=bad_name, headers=_form_headers(db_env))
    check_error(resp, "/api/v1/ingest/file", 400, "invalid_field")
    bad_field = _multipart([(b'name="document_id"', b"d\x00"), (b'name="file"; filename="a.txt"', b"hello")])
    resp = await db_env.client.post("/api/v1/ingest/file", content=bad_field, headers=_form_headers(db_env))
    check_error(resp, "/api/v1/ingest/file", 422, "validation_error")
    assert await db_env.snapshot() == before


async def test_nan_and_infinity_are_422(db_env: Env) -> None:
    """Python's json reads NaN/Infinity; PostgreSQL's json type refuses them (a 500 there before)."""
    for raw in (
        _obj("options", '{"x": NaN}', url=URL),
        _obj("metadata", '{"x": [Infinity]}', url=URL),
    ):
        resp = await db_env.client.post("/api/v1/ingest/url", **_json(db_env, raw))
        assert "NaN" in check_error(resp, "/api/v1/ingest/url", 422, "validation_error")["message"]
    resp = await db_env.client.post(
        "/api/v1/search", **_json(db_env, '{"query": "q", "score_threshold": NaN}')
    )
    check_error(resp, "/api/v1/search", 422, "validation_error")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _obj(field: str, raw_json: str, **fields: str) -> str:
    """A JSON object whose ``field`` is raw JSON text (NaN, deep nesting: what json.dumps won't write)."""
    return json.dumps(fields)[:-1] + (", " if fields else "") + f'"{field}": {raw_json}' + "}"


@pytest.mark.parametrize("depth", [100, 900, 10_000])
async def test_deep_nesting_is_refused_and_never_poisons_claims(db_env: Env, depth: int) -> None:
    """900 levels used to be accepted, then every claim that leased the job answered 500."""
    raw = _obj("options", _obj("a", _nested(depth)), url=URL)
    resp = await db_env.client.post("/api/v1/ingest/url", **_json(db_env, raw))
    code = "invalid_json" if depth > 900 else "validation_error"
    check_error(resp, "/api/v1/ingest/url", 422, code)
    batch = _obj("items", "[" + _obj("metadata", _obj("a", _nested(depth)), url=URL) + "]")
    check_error(
        await db_env.client.post("/api/v1/ingest/batch", **_json(db_env, batch)),
        "/api/v1/ingest/batch",
        422,
        code,
    )
    form = _multipart(
        [
            (b'name="options"', _obj("a", _nested(depth)).encode()),
            (b'name="file"; filename="a.txt"', b"x"),
        ]
    )
    resp = await db_env.client.post("/api/v1/ingest/file", content=form, headers=_form_headers(db_env))
    check_error(resp, "/api/v1/ingest/file", 422, code)
    # Within the limit: accepted, and a worker can claim it.
    ok = _obj("options", _obj("a", _nested(50)), url=URL)
    assert (await db_env.client.post("/api/v1/ingest/url", **_json(db_env, ok))).status_code == 202
    claimed = await _claim_all(db_env)
    assert claimed.status_code == 200, claimed.text
    assert len(claimed.json()["jobs"]) == 1


async def test_deep_result_metadata_from_a_worker_is_422(db_env: Env) -> None:
    """The same limit on what a worker sends back (returned later by GET /status)."""
    assert (
        await db_env.client.post("/api/v1/ingest/url", **_json(db_env, json.dumps({"url": URL})))
    ).status_code == 202
    job = (await _claim_all(db_env)).json()["jobs"][0]
    lease = {"job_id": job["job_id"], "lease_token": job["lease_token"], "markdown": "m"}
    raw = _obj("metadata", _obj("a", _nested(300)), **lease)
    resp = await db_env.client.post(
        "/worker/complete", content=raw, headers={**db_env.worker, "content-type": "application/json"}
    )
    check_error(resp, "/worker/complete", 422, "validation_error")


async def test_huge_json_bodies(db_env: Env) -> None:
    """12 MiB JSON bodies are 413 body_too_large (MORAG_MAX_JSON_BYTES), refused unread."""
    big = "x" * (12 * 1024 * 1024)
    resp = await db_env.client.post(
        "/api/v1/ingest/batch", **_json(db_env, json.dumps({"items": [{"url": big}]}))
    )
    check_error(resp, "/api/v1/ingest/batch", 413, "body_too_large")
    resp = await db_env.client.post("/api/v1/ingest/url", **_json(db_env, json.dumps({"url": URL + big})))
    check_error(resp, "/api/v1/ingest/url", 413, "body_too_large")
    resp = await db_env.client.post("/api/v1/search", **_json(db_env, json.dumps({"query": big})))
    check_error(resp, "/api/v1/search", 413, "body_too_large")


async def test_non_utf8_bodies_and_fields(db_env: Env) -> None:
    """Invalid UTF-8 is malformed input everywhere: 422 invalid_json (JSON), 400 (form, cookies)."""
    for path, headers in (("/api/v1/ingest/url", db_env.alice), ("/worker/heartbeat", db_env.worker)):
        resp = await db_env.client.post(
            path, content=b'{"url": "\xff\xfe"}', headers={**headers, "content-type": "application/json"}
        )
        check_error(resp, path, 422, "invalid_json")
    form = _multipart([(b'name="content_type"', b"\xff\xfe"), (b'name="file"; filename="a.txt"', b"x")])
    resp = await db_env.client.post("/api/v1/ingest/file", content=form, headers=_form_headers(db_env))
    check_error(resp, "/api/v1/ingest/file", 400, "invalid_field")
    resp = await db_env.client.put("/api/v1/cookies", content=b"\xff\xfe", headers=db_env.alice)
    check_error(resp, "/api/v1/cookies", 400, "invalid_cookies")


@pytest.mark.parametrize("length", ["999999999999999", "-5", "abc", "3"])
async def test_lying_content_length(db_env: Env, length: str) -> None:
    """The header is only a hint: too large is 413 up front, nonsense is ignored, the body decides."""
    form = _multipart([(b'name="file"; filename="a.txt"', b"hello world")])
    headers = {**_form_headers(db_env), "content-length": length}
    resp = await db_env.client.post("/api/v1/ingest/file", content=form, headers=headers)
    if length.isdigit() and int(length) > 10**12:
        check_error(resp, "/api/v1/ingest/file", 413, "upload_too_large")
    else:
        assert resp.status_code == 202, resp.text
