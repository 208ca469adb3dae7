"""GET /api/v1/status/{id}, /status/ (filter, cursor) and /status/stats/queues with real numbers."""

from __future__ import annotations

import asyncio

from tests.integration.api.conftest import Env, check_error, check_openapi, claim, complete


async def _submit(env: Env, n: int, headers: dict | None = None) -> list[str]:
    ids = []
    for i in range(n):
        resp = await env.client.post(
            "/api/v1/ingest/url",
            headers=headers or env.alice,
            json={"url": f"https://example.org/{i}", "content_type": "web"},
        )
        ids.append(resp.json()["task_id"])
    return ids


async def test_status_of_one_task_through_its_life(env: Env) -> None:
    (task_id,) = await _submit(env, 1)
    path = "/api/v1/status/{task_id}"
    body = check_openapi(await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice), path)
    assert body["status"] == "queued" and body["attempts"] == 0 and body["started_at"] is None
    (job,) = await claim(env, ["web"])
    hb = await env.client.post(
        "/worker/heartbeat",
        headers=env.worker,
        json={
            "job_id": job["job_id"],
            "lease_token": job["lease_token"],
            "progress": 0.5,
            "message": "fetching",
        },
    )
    assert hb.status_code == 200
    body = check_openapi(await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice), path)
    assert body["status"] == "running" and body["progress"] == 0.5 and body["message"] == "fetching"
    assert body["attempts"] == 1 and body["worker_id"] == "test-worker" and body["started_at"]
    assert body["lane"].startswith("cpu-tasks-")
    await complete(env, job, "# A page\n\nwith some words to index.")
    # Ingest is final only once indexed: between processing and indexing it is still running.
    seen = set()
    for _ in range(600):
        body = check_openapi(await env.client.get(f"/api/v1/status/{task_id}", headers=env.alice), path)
        seen.add((body["status"], body["stage"]))
        if body["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert seen <= {("running", "index"), ("succeeded", "done")}, seen
    assert body["status"] == "succeeded" and body["progress"] == 1.0 and body["finished_at"]
    assert body["result"]["markdown"].startswith("# A page")
    check_error(
        await env.client.get(f"/api/v1/status/{task_id}", headers=env.bob), path, 404, "task_not_found"
    )
    check_error(await env.client.get("/api/v1/status/nope", headers=env.alice), path, 404, "task_not_found")


async def test_list_filter_and_cursor(env: Env) -> None:
    ids = await _submit(env, 5)
    await _submit(env, 2, env.bob)
    await env.client.delete(f"/api/v1/ingest/{ids[0]}", headers=env.alice)
    seen, cursor = [], None
    while True:
        url = "/api/v1/status/?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = check_openapi(await env.client.get(url, headers=env.alice), "/api/v1/status/")
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first, only alice's, each once
    canceled = (await env.client.get("/api/v1/status/?state=canceled", headers=env.alice)).json()
    assert [t["task_id"] for t in canceled["tasks"]] == [ids[0]]
    check_error(
        await env.client.get("/api/v1/status/?state=bogus", headers=env.alice),
        "/api/v1/status/",
        422,
        "validation_error",
    )


async def test_queue_stats_are_real_numbers(env: Env) -> None:
    await _submit(env, 3)
    (_job,) = await claim(env, ["web"])
    stats = check_openapi(
        await env.client.get("/api/v1/status/stats/queues", headers=env.alice), "/api/v1/status/stats/queues"
    )
    cpu = next(lane for lane in stats["lanes"] if lane["lane"].startswith("cpu-"))
    assert cpu["queued"] == 2 and cpu["running"] == 1 and cpu["workers_online"] == 1
    assert cpu["oldest_queued_age_s"] is not None and cpu["oldest_queued_age_s"] >= 0
    bob = (await env.client.get("/api/v1/status/stats/queues", headers=env.bob)).json()
    assert all(lane["queued"] == 0 for lane in bob["lanes"])
