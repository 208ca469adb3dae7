"""POST /process/{file,url}: the request waits for a (simulated) worker's result, or answers 202."""

from __future__ import annotations

import asyncio

from tests.integration.api.conftest import Env, check_error, check_openapi, claim, complete

PDF = b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"


async def _worker(env: Env, content_types: list[str], markdown: str = "# Result") -> dict:
    (job,) = await claim(env, content_types)
    await complete(env, job, markdown, {"pages": 1})
    return job


async def test_process_file_waits_for_the_worker(env: Env) -> None:
    req = env.client.post(
        "/process/file", headers=env.alice, files={"file": ("a.pdf", PDF)}, data={"options": '{"fast": true}'}
    )
    resp, job = await asyncio.gather(req, _worker(env, ["document"], "# Hello"))
    assert resp.status_code == 200, resp.text
    body = check_openapi(resp, "/process/file")
    assert body["success"] is True and body["content"] == "# Hello" and body["metadata"] == {"pages": 1}
    assert body["error_message"] is None and body["processing_time"] >= 0 and body["task_id"] == job["job_id"]
    assert job["content_type"] == "document" and job["options"] == {"fast": True} and job["download_url"]


async def test_process_url_detects_youtube_and_returns_failure(env: Env) -> None:
    async def fail_it() -> dict:
        (job,) = await claim(env, ["youtube"])
        resp = await env.client.post(
            "/worker/fail",
            headers=env.worker,
            json={
                "job_id": job["job_id"],
                "lease_token": job["lease_token"],
                "error": "video is private",
                "error_class": "bad_input",
                "retryable": False,
            },
        )
        assert resp.status_code == 200
        return job

    req = env.client.post("/process/url", headers=env.alice, json={"url": "https://youtu.be/abc"})
    resp, job = await asyncio.gather(req, fail_it())
    body = check_openapi(resp, "/process/url")
    assert resp.status_code == 200 and body["success"] is False and body["content"] is None
    assert body["error_message"] == "video is private" and job["source_url"] == "https://youtu.be/abc"


async def test_process_url_web_default(env: Env) -> None:
    req = env.client.post("/process/url", headers=env.alice, json={"url": "https://example.org/a"})
    resp, job = await asyncio.gather(req, _worker(env, ["web"]))
    assert resp.json()["content"] == "# Result" and job["content_type"] == "web"


async def test_process_answers_202_when_the_worker_is_slow(env: Env) -> None:
    resp = await env.client.post("/process/url?wait_s=0.3", headers=env.alice, json={"url": "https://a.org"})
    assert resp.status_code == 202, resp.text
    body = check_openapi(resp, "/process/url")
    assert body["status"] == "queued" and resp.headers["location"] == f"/api/v1/status/{body['task_id']}"
    resp = await env.client.post(
        "/process/file", headers=env.alice, files={"file": ("a.pdf", PDF)}, data={"wait_s": "0"}
    )
    assert resp.status_code == 202 and check_openapi(resp, "/process/file")["status"] == "queued"
    # The result can then be followed on the status endpoint.
    job = await _worker(env, ["web"])
    status = (await env.client.get(f"/api/v1/status/{job['job_id']}", headers=env.alice)).json()
    assert status["status"] == "succeeded" and status["result"]["markdown"] == "# Result"


async def test_process_bad_input_leaves_nothing(env: Env) -> None:
    before = await env.snapshot()
    check_error(
        await env.client.post("/process/file", headers=env.alice, files={"file": ("e", b"")}),
        "/process/file",
        400,
        "empty_file",
    )
    check_error(
        await env.client.post(
            "/process/file", headers=env.alice, files={"file": ("x", b"\x7fELF\x02\x01\x01" + b"\0" * 99)}
        ),
        "/process/file",
        415,
        "unsupported_content",
    )
    check_error(
        await env.client.post("/process/file?wait_s=601", headers=env.alice, files={"file": ("a", PDF)}),
        "/process/file",
        422,
        "validation_error",
    )
    check_error(
        await env.client.post("/process/url", headers=env.alice, json={"url": "file:///etc/passwd"}),
        "/process/url",
        400,
        "unsupported_scheme",
    )
    check_error(
        await env.client.post(
            "/process/url", headers={**env.alice, "Content-Type": "application/json"}, content=b"{oops"
        ),
        "/process/url",
        422,
        "invalid_json",
    )
    check_error(
        await env.client.post("/process/url", headers=env.alice, json={"url": "https://a", "wait_s": "x"}),
        "/process/url",
        422,
        "validation_error",
    )
    assert await env.snapshot() == before


async def test_a_waiting_request_reads_its_job_again_only_when_that_job_ends(env: Env, monkeypatch) -> None:
    """The wait sleeps on its own job's end (the job event), not on a timer nor on the queue's
    other changes. Break caught: the old wait, re-reading at every change and every second."""
    from api import job_ends

    monkeypatch.setattr(job_ends, "END_RECHECK_S", 3600.0)  # only a wake-up can end the wait early
    jobs = env.state.jobs
    real_get = jobs.get
    reads: list[str] = []

    async def counting_get(user_id, job_id):
        reads.append(job_id)
        return await real_get(user_id, job_id)

    monkeypatch.setattr(jobs, "get", counting_get)
    waiting = asyncio.create_task(
        env.client.post("/process/url?wait_s=60", headers=env.alice, json={"url": "https://example.org/mine"})
    )
    (mine,) = await claim(env, ["web"])
    for _ in range(100):
        if mine["job_id"] in reads:
            break
        await asyncio.sleep(0.01)
    # A busy queue meanwhile: other jobs queued, claimed, completed and failed.
    for i in range(4):
        other = await env.client.post(
            "/process/url?wait_s=0", headers=env.alice, json={"url": f"https://example.org/{i}"}
        )
        assert other.status_code == 202
        (job,) = await claim(env, ["web"])
        if i % 2:
            await complete(env, job, "# other")
        else:
            body = {
                "job_id": job["job_id"],
                "lease_token": job["lease_token"],
                "error": "x",
                "retryable": False,
            }
            assert (await env.client.post("/worker/fail", headers=env.worker, json=body)).status_code == 200
    await asyncio.sleep(1.2)  # longer than the old one-second re-check
    assert reads.count(mine["job_id"]) == 1, reads  # read once, when the wait began
    await complete(env, mine, "# mine")
    resp = await asyncio.wait_for(waiting, 10)  # well before the (here hour-long) safety re-check
    assert resp.status_code == 200 and resp.json()["content"] == "# mine"
    assert reads.count(mine["job_id"]) == 2, reads
