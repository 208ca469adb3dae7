"""/ready, /metrics, /docs offline and / on a running app (SQLite, Qdrant local mode, local MiniLM)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from api.db import make_engine
from tests.integration.api.conftest import check_openapi, make_settings, running_env


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
            if got == want:
                return float(m.group(3))
    return 0.0


async def test_ready_checks_database_vector_store_and_embedder(env: Any) -> None:
    r = await env.client.get("/ready")
    body = check_openapi(r, "/ready")
    assert r.status_code == 200 and body["status"] == "ready", body
    assert set(body["checks"]) == {"database", "vector_store", "embedder"}
    assert "qdrant local mode" in body["checks"]["vector_store"]["detail"]
    assert "384-d" in body["checks"]["embedder"]["detail"]


async def test_ready_is_503_with_the_reason_when_the_database_is_down(env: Any) -> None:
    state = env.app.state.morag
    real = state.engine
    # Down for everyone: the readiness check and the job store (which /metrics reads through).
    state.engine = state.jobs.engine = make_engine("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    try:
        r = await env.client.get("/ready")
        m = await env.client.get("/metrics")
    finally:
        await state.engine.dispose()
        state.engine = state.jobs.engine = real
    body = check_openapi(r, "/ready")
    assert r.status_code == 503 and body["status"] == "not ready"
    assert body["checks"]["database"]["ok"] is False
    assert (
        "refused" in body["checks"]["database"]["detail"].lower()
        or "connect" in body["checks"]["database"]["detail"].lower()
    )
    assert body["checks"]["embedder"]["ok"] is True
    assert m.status_code == 503


async def test_ready_is_503_when_the_vector_store_is_unreachable(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, qdrant_url="http://127.0.0.1:1")
    async with running_env(settings) as env:
        r = await env.client.get("/ready")
    body = check_openapi(r, "/ready")
    assert r.status_code == 503 and body["checks"]["vector_store"]["ok"] is False
    assert "unreachable" in body["checks"]["vector_store"]["detail"]
    assert body["checks"]["database"]["ok"] is True


async def test_a_large_local_collection_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_env(make_settings(tmp_path, qdrant_local_max_points=2, chunk_size=50)) as env:
        await env.app.state.indexer.index_document("1", "doc", "word " * 60)
        with caplog.at_level(logging.WARNING, logger="morag.ops"):
            r = await env.client.get("/ready")
    body = r.json()
    assert r.status_code == 200 and len(body["warnings"]) == 1
    assert "move to a Qdrant server" in body["warnings"][0]
    assert any("Qdrant local mode holds" in rec.getMessage() for rec in caplog.records)


async def test_metrics_count_requests_by_route_uploads_and_jobs_by_lane_and_state(env: Any) -> None:
    before = (await env.client.get("/metrics")).text
    payload = b"hello metrics " * 100
    r = await env.client.post(
        "/api/v1/ingest/file", headers=env.alice, files={"file": ("a.txt", payload, "text/plain")}
    )
    assert r.status_code == 202, r.text
    task = r.json()["task_id"]
    assert (await env.client.get(f"/api/v1/status/{task}", headers=env.alice)).status_code == 200
    m = await env.client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    after = m.text
    assert _sample(after, "morag_jobs", lane="cpu", state="queued") == 1.0
    route = "/api/v1/status/{task_id}"
    key = {"method": "GET", "route": route}
    assert (
        _sample(after, "morag_http_requests_total", **key, status="200")
        == _sample(before, "morag_http_requests_total", **key, status="200") + 1
    )
    assert _sample(after, "morag_http_request_duration_seconds_count", **key) >= 1
    assert task not in after  # routes are labelled by template, never by raw path
    up = {"route": "/api/v1/ingest/file"}
    assert _sample(after, "morag_upload_bytes_total", **up) - _sample(
        before, "morag_upload_bytes_total", **up
    ) > len(payload)
    assert _sample(after, "morag_workers_online", lane="any") == 0.0

    # A worker's claim: its long-poll wait by lane, and the job's dispatch latency (first attempt).
    claim = {"worker_id": "w", "lanes": ["gpu", "cpu"], "content_types": ["document"], "wait_s": 0.2}
    got = await env.client.post("/worker/claim", headers=env.worker, json=claim)
    assert got.status_code == 200 and got.json()["jobs"][0]["job_id"] == task
    claimed = (await env.client.get("/metrics")).text
    counted = (("morag_claim_wait_seconds_count", "gpu"), ("morag_dispatch_latency_seconds_count", "cpu"))
    for name, lane in counted:
        assert _sample(claimed, name, lane=lane) == _sample(after, name, lane=lane) + 1, name
    assert _sample(claimed, "morag_workers_online", lane="cpu") == 1.0
    for name in (
        "morag_dispatch_latency_seconds",
        "morag_lease_expiries",
        "morag_job_retries",
        "morag_jobs_dead",
    ):
        assert f"# TYPE {name}" in after


async def test_docs_work_offline_and_the_front_page_leads_there(env: Any) -> None:
    r = await env.client.get("/")
    assert r.status_code in (302, 307) and r.headers["location"] == "/docs"
    page = (await env.client.get("/docs")).text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert scripts and all(s.startswith("/docs/assets/") for s in scripts if not s.startswith("#")), scripts
    for asset in scripts:
        got = await env.client.get(asset)
        assert got.status_code == 200 and len(got.content) > 500, asset


@pytest.mark.parametrize(
    "settings_overrides",
    [{"lease_s": 1.5, "reaper_interval_s": 0.1, "retry_base_s": 0.0, "retry_max_s": 0.0}],
)
async def test_metrics_count_processing_retries_lease_expiries_and_dead_jobs(env: Any) -> None:
    """The job-event listener and the reaper feed the queue-event metrics, labelled by lane kind."""
    import asyncio

    from tests.integration.api.conftest import claim, complete

    def sample(text: str, name: str, **labels: str) -> float:
        return _sample(text, name, **labels)

    async def scrape() -> str:
        return (await env.client.get("/metrics")).text

    ids = []
    for name in ("a.txt", "b.txt"):
        r = await env.client.post(
            "/api/v1/ingest/file", headers=env.alice, files={"file": (name, b"metrics " * 50, "text/plain")}
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["task_id"])
    before = await scrape()
    jobs = {j["job_id"]: j for j in await claim(env, ["document"]) + await claim(env, ["document"])}
    assert set(jobs) == set(ids)

    async def fail(job: dict[str, Any]) -> None:
        body = {"job_id": job["job_id"], "lease_token": job["lease_token"], "error": "boom"}
        assert (await env.client.post("/worker/fail", headers=env.worker, json=body)).status_code == 200

    await complete(env, jobs[ids[0]], "# done")
    await fail(jobs[ids[1]])  # attempt 1 of 3: retried
    after = await scrape()
    done = "morag_processing_seconds_count"
    assert sample(after, done, content_type="document") == sample(before, done, content_type="document") + 1
    assert (
        sample(after, "morag_job_retries_total", lane="cpu")
        == sample(before, "morag_job_retries_total", lane="cpu") + 1
    )

    (_silent,) = await claim(env, ["document"])  # attempt 2: the worker goes silent, the lease runs out
    for _ in range(100):
        if (await env.client.get(f"/api/v1/status/{ids[1]}", headers=env.alice)).json()["status"] == "queued":
            break
        await asyncio.sleep(0.1)
    expired = await scrape()
    assert (
        sample(expired, "morag_lease_expiries_total", lane="cpu")
        == sample(after, "morag_lease_expiries_total", lane="cpu") + 1
    )
    assert (
        sample(expired, "morag_job_retries_total", lane="cpu")
        == sample(after, "morag_job_retries_total", lane="cpu") + 1
    )

    (last,) = await claim(env, ["document"])  # attempt 3 of 3: a failure now ends it dead
    await fail(last)
    final = await scrape()
    assert (
        sample(final, "morag_jobs_dead_total", lane="cpu")
        == sample(expired, "morag_jobs_dead_total", lane="cpu") + 1
    )
    finished = "morag_jobs_finished_total"
    assert (
        sample(final, finished, lane="cpu", state="dead")
        == sample(before, finished, lane="cpu", state="dead") + 1
    )
    # Ended jobs are counted as they end; the morag_jobs gauge holds only the live ones.
    r = await env.client.post("/api/v1/ingest/url", headers=env.alice, json={"url": "https://a.org/x"})
    assert (
        await env.client.delete(f"/api/v1/ingest/{r.json()['task_id']}", headers=env.alice)
    ).status_code == 200
    canceled = await scrape()
    assert (
        sample(canceled, finished, lane="cpu", state="canceled")
        == sample(final, finished, lane="cpu", state="canceled") + 1
    )
    states = set(re.findall(r'^morag_jobs\{lane="\w+",state="(\w+)"\}', canceled, re.MULTILINE))
    assert states <= {"queued", "running"}, states
