"""Per-key limits (finding #7): one key's flood is 429 with Retry-After, other keys are unaffected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.conftest import Env, make_settings, running_env

URL = {"url": "https://example.com/a", "content_type": "web"}
CLAIM = {"worker_id": "w", "lanes": ["cpu", "gpu"], "content_types": ["echo"]}


@pytest.fixture
async def env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=5,
        process_wait_default_s=0,
        rate_submit_per_s=0.5,
        rate_submit_burst=3,
        rate_claim_per_s=0.5,
        rate_claim_burst=3,
        max_polls_per_key=1,
        max_uploads_per_key=1,
    )
    async with running_env(settings) as e:
        yield e


def _limited(resp: Any) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["code"] == "rate_limited"
    assert int(resp.headers["retry-after"]) >= 1


async def test_submission_rate_per_key(env: Env) -> None:
    for _ in range(3):
        assert (await env.client.post("/api/v1/ingest/url", headers=env.alice, json=URL)).status_code == 202
    _limited(await env.client.post("/api/v1/ingest/url", headers=env.alice, json=URL))
    _limited(await env.client.post("/process/url?wait_s=0", headers=env.alice, json=URL))
    # Bob is not starved by alice.
    assert (await env.client.post("/api/v1/ingest/url", headers=env.bob, json=URL)).status_code == 202
    # A retry queues work too: it counts as a submission (refused before the task is even looked up).
    _limited(await env.client.post(f"/api/v1/tasks/{'0' * 32}/retry", headers=env.alice))
    # Reads are not counted.
    assert (await env.client.get("/api/v1/status/", headers=env.alice)).status_code == 200


async def test_claim_rate_per_key(env: Env) -> None:
    for _ in range(3):
        resp = await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 0})
        assert resp.status_code == 204, resp.text
    _limited(await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 0}))


async def test_open_long_polls_per_key(env: Env) -> None:
    inside = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:  # pulled by the app: the claim is admitted by then
        inside.set()
        yield json.dumps({**CLAIM, "wait_s": 3}).encode()

    headers = {**env.worker, "content-type": "application/json"}
    first = asyncio.create_task(env.client.post("/worker/claim", headers=headers, content=body()))
    await asyncio.wait_for(inside.wait(), 10)
    _limited(await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 0}))
    assert (await first).status_code == 204
    resp = await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 0})
    assert resp.status_code == 204  # the slot is free again


async def test_uploads_in_progress_per_key(env: Env) -> None:
    release, inside = asyncio.Event(), asyncio.Event()
    boundary = "b0undary"

    async def slow_body() -> AsyncIterator[bytes]:
        inside.set()  # pulled by the app: the upload is admitted by then
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content_type"\r\n\r\necho\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        ).encode()
        await release.wait()
        yield f"hello\r\n--{boundary}--\r\n".encode()

    headers = {**env.alice, "content-type": f"multipart/form-data; boundary={boundary}"}
    first = asyncio.create_task(env.client.post("/api/v1/ingest/file", headers=headers, content=slow_body()))
    await asyncio.wait_for(inside.wait(), 10)
    second = await env.client.post(
        "/api/v1/ingest/file",
        headers=env.alice,
        files={"file": ("b.txt", b"x")},
        data={"content_type": "echo"},
    )
    _limited(second)
    release.set()
    assert (await first).status_code == 202
