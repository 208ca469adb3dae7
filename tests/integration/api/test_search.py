"""Ingest -> worker result -> indexing stage -> search, with the local MiniLM model and local Qdrant."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.indexing.errors import EmbeddingError, VectorStoreUnavailable
from tests.integration.api.conftest import check_error, check_openapi, claim, complete

pytestmark = pytest.mark.slow  # indexes with the real MiniLM model

DOC = """# Gardening handbook

## Tomatoes

Tomatoes need six hours of direct sunlight and deep watering twice a week.

## Compost

A compost heap turns kitchen scraps into humus within three months when it is turned weekly.
"""
DOC_META = {
    "sections": [
        {"heading": "Tomatoes", "level": 2, "page_start": 1, "page_end": 1},
        {"heading": "Compost", "level": 2, "page_start": 2, "page_end": 2},
    ]
}


async def ingest_and_process(env, markdown: str, worker_meta: dict[str, Any], **fields: Any) -> str:
    data = {"content_type": "document", **fields}
    r = await env.client.post(
        "/api/v1/ingest/file", headers=env.alice, data=data, files={"file": ("garden.md", markdown.encode())}
    )
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    (job,) = await claim(env, ["document"])
    await complete(env, job, markdown, worker_meta)
    return str(task_id)


async def wait_status(env, task_id: str, want: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice)).json()
        if body["status"] in want:
            return dict(body)
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def search(env, headers, query: str, **kw: Any) -> dict[str, Any]:
    r = await env.client.post("/api/v1/search", headers=headers, json={"query": query, **kw})
    return dict(check_openapi(r, "/api/v1/search"))


async def test_ingest_is_final_only_when_indexed_and_search_finds_the_chunk(env):
    task = await ingest_and_process(env, DOC, DOC_META, metadata='{"topic": "garden"}', document_id="garden")
    status = await wait_status(env, task, {"succeeded", "failed"})
    assert status["status"] == "succeeded", status
    assert status["result"]["index"]["chunks"] >= 1 and status["result"]["index"]["dimension"] == 384
    hits = (await search(env, env.alice, "how often should I water tomato plants"))["results"]
    assert hits and "sunlight" in hits[0]["text"]
    assert hits[0]["document_id"] == "garden" and hits[0]["metadata"]["topic"] == "garden"
    assert hits[0]["location"], hits[0]
    # Bob sees nothing of alice's, whatever filter he sends.
    assert (await search(env, env.bob, "tomato watering"))["results"] == []
    assert (await search(env, env.bob, "tomato watering", filters={"user_id": "1"}))["results"] == []
    # Filters on the user's own metadata.
    assert (await search(env, env.alice, "tomato", filters={"topic": "cars"}))["results"] == []


async def test_reingest_with_replace_existing_keeps_point_count(env):
    task = await ingest_and_process(env, DOC, DOC_META, document_id="garden")
    await wait_status(env, task, {"succeeded"})
    indexer = env.app.state.indexer
    before = await indexer.count_points()
    task2 = await ingest_and_process(env, DOC, DOC_META, document_id="garden", replace_existing="true")
    await wait_status(env, task2, {"succeeded"})
    assert await indexer.count_points() == before > 0
    r = await env.client.delete("/api/v1/documents/garden", headers=env.alice)
    assert check_openapi(r, "/api/v1/documents/{document_id}")["removed_points"] == before
    assert await indexer.count_points() == 0


async def test_outage_waits_for_indexing_then_resumes(env, monkeypatch):
    env.settings.index_retry_base_s = 0.2
    indexer = env.app.state.indexer
    real = indexer.embedder.embed
    calls = {"n": 0}

    async def flaky(texts):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise VectorStoreUnavailable("qdrant at http://qdrant:6333 refused the connection")
        return await real(texts)

    monkeypatch.setattr(indexer.embedder, "embed", flaky)
    task = await ingest_and_process(env, DOC, DOC_META)
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the task tells the user why it waits
        body = (await env.client.get(f"/api/v1/status/{task}", headers=env.alice)).json()
        if (body["message"] or "").startswith("waiting for indexing"):
            assert body["status"] == "running" and "refused" in body["message"]
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)
    done = await wait_status(env, task, {"succeeded", "failed"})
    assert done["status"] == "succeeded" and calls["n"] >= 3


async def test_hard_embedding_failure_fails_the_task_loudly(env, monkeypatch):
    async def refuse(texts):
        raise EmbeddingError("Gemini answered 403: API key not valid", retryable=False)

    monkeypatch.setattr(env.app.state.indexer.embedder, "embed", refuse)
    task = await ingest_and_process(env, DOC, DOC_META)
    status = await wait_status(env, task, {"succeeded", "failed"})
    assert status["status"] == "failed" and "API key not valid" in status["error"]
    assert status["result"]["markdown"] == DOC  # the worker's result is kept
    assert await env.app.state.indexer.count_points() == 0


async def test_search_bad_input(env):
    r = await env.client.post("/api/v1/search", headers=env.alice, json={"query": ""})
    check_error(r, "/api/v1/search", 422, "validation_error")
    r = await env.client.post(
        "/api/v1/search", headers=env.alice, json={"query": "x", "filters": {"a": {"b": 1}}}
    )
    check_error(r, "/api/v1/search", 400, "invalid_filter")
    r = await env.client.post("/api/v1/search", headers=env.worker, json={"query": "x"})
    check_error(r, "/api/v1/search", 403, "wrong_scope")
