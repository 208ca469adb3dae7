"""The Python client against respx-mocked answers: requests sent, answers parsed, errors mapped."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx

from client import ApiError, AsyncMoragClient, AuthError, MoragClient, ServerUnreachable, TaskTimeout
from client.models import Task, TaskCreated

BASE = "http://srv.test"
KEY = "mrg_test"


def _task(status: str = "queued", progress: float = 0.0, **extra: object) -> dict[str, object]:
    return {
        "task_id": "t1",
        "status": status,
        "stage": "process",
        "progress": progress,
        "message": None,
        "content_type": "document",
        "lane": "cpu-1",
        "attempts": 1,
        "max_attempts": 3,
        "worker_id": None,
        "created_at": "2026-12-01T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
        "error_class": None,
        **extra,
    }


@respx.mock
def test_ingest_file_sends_multipart_with_key_and_json_fields(tmp_path: Path) -> None:
    src = tmp_path / "notes.md"
    src.write_text("# hi")
    route = respx.post(f"{BASE}/api/v1/ingest/file").respond(202, json={"task_id": "t1", "status": "queued"})
    with MoragClient(BASE, KEY) as morag:
        created = morag.ingest_file(src, metadata={"team": "a"}, replace_existing=True, document_id="d1")
    assert created == TaskCreated(task_id="t1", status="queued")
    req = route.calls.last.request
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = req.content.decode()
    assert 'name="file"; filename="notes.md"' in body and "# hi" in body
    assert '{"team": "a"}' in body
    assert 'name="replace_existing"\r\n\r\ntrue' in body
    assert 'name="document_id"\r\n\r\nd1' in body
    assert 'name="content_type"' not in body  # unset fields are not sent


@respx.mock
def test_ingest_url_and_list_filter_use_the_documented_names() -> None:
    ingest = respx.post(f"{BASE}/api/v1/ingest/url").respond(202, json={"task_id": "t2", "status": "queued"})
    listing = respx.get(f"{BASE}/api/v1/tasks").respond(200, json={"tasks": [_task()], "next_cursor": None})
    with MoragClient(BASE, KEY) as morag:
        morag.ingest_url("https://example.org/a", content_type="web", options={"x": 1})
        page = morag.list_tasks("failed", limit=7)
    assert json.loads(ingest.calls.last.request.content) == {
        "url": "https://example.org/a",
        "content_type": "web",
        "options": {"x": 1},
    }
    assert listing.calls.last.request.url.params == httpx.QueryParams({"limit": "7", "status": "failed"})
    assert isinstance(page.tasks[0], Task)


@respx.mock
def test_iter_tasks_follows_the_cursor() -> None:
    route = respx.get(f"{BASE}/api/v1/tasks")
    route.side_effect = [
        httpx.Response(200, json={"tasks": [_task(), _task()], "next_cursor": "c2"}),
        httpx.Response(200, json={"tasks": [_task()], "next_cursor": None}),
    ]
    with MoragClient(BASE, KEY) as morag:
        assert len(list(morag.iter_tasks(page_size=2))) == 3
    assert route.calls[1].request.url.params["cursor"] == "c2"


@respx.mock
def test_error_body_becomes_api_error_with_code_and_hint() -> None:
    respx.get(f"{BASE}/api/v1/status/nope").respond(
        404, json={"code": "task_not_found", "message": "no such task"}
    )
    with MoragClient(BASE, KEY) as morag, pytest.raises(ApiError) as info:
        morag.status("nope")
    assert (info.value.status, info.value.code, info.value.message) == (404, "task_not_found", "no such task")
    assert "morag list" in info.value.hint


@respx.mock
def test_401_is_an_auth_error_and_a_non_json_body_still_maps() -> None:
    respx.get(f"{BASE}/api/v1/workers").respond(401, json={"code": "unauthorized", "message": "bad key"})
    respx.get(f"{BASE}/api/v1/documents").respond(502, text="<html>bad gateway</html>")
    with MoragClient(BASE, KEY) as morag:
        with pytest.raises(AuthError) as auth:
            morag.workers()
        with pytest.raises(ApiError) as gw:
            morag.documents()
    assert "MORAG_API_KEY" in auth.value.hint
    assert gw.value.code == "http_502" and "bad gateway" in gw.value.message


@respx.mock
def test_transport_error_is_server_unreachable() -> None:
    respx.get(f"{BASE}/api/v1/workers").mock(side_effect=httpx.ConnectError("refused"))
    with MoragClient(BASE, KEY) as morag, pytest.raises(ServerUnreachable, match="refused"):
        morag.workers()


@respx.mock
def test_wait_polls_until_final_and_reports_each_read() -> None:
    respx.get(f"{BASE}/api/v1/status/t1").side_effect = [
        httpx.Response(200, json=_task("queued")),
        httpx.Response(200, json=_task("running", 0.5, message="reading")),
        httpx.Response(200, json=_task("succeeded", 1.0, result={"markdown": "# done"})),
    ]
    seen: list[str] = []
    with MoragClient(BASE, KEY) as morag:
        task = morag.wait("t1", poll_s=0, on_update=lambda t: seen.append(t.status))
    assert seen == ["queued", "running", "succeeded"]
    assert task.markdown == "# done" and task.final


@respx.mock
def test_wait_times_out() -> None:
    respx.get(f"{BASE}/api/v1/status/t1").respond(200, json=_task("queued"))
    with MoragClient(BASE, KEY) as morag, pytest.raises(TaskTimeout):
        morag.wait("t1", timeout=0.05, poll_s=0.01)


@respx.mock
def test_process_answers_result_or_task_when_slow(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("x")
    respx.post(f"{BASE}/process/file").respond(
        200,
        json={"success": True, "content": "x", "metadata": {}, "processing_time": 0.1, "error_message": None},
    )
    slow = respx.post(f"{BASE}/process/url").respond(202, json={"task_id": "t9", "status": "running"})
    with MoragClient(BASE, KEY) as morag:
        done = morag.process_file(src, wait_s=5)
        later = morag.process_url("https://example.org", wait_s=1)
    assert not isinstance(done, TaskCreated) and done.content == "x"
    assert later == TaskCreated(task_id="t9", status="running")
    assert json.loads(slow.calls.last.request.content)["wait_s"] == 1


@respx.mock
def test_new_operations_paths() -> None:
    retry = respx.post(f"{BASE}/api/v1/tasks/a%2Fb/retry").respond(
        202, json={"task_id": "a/b", "status": "queued"}
    )
    prune = respx.post(f"{BASE}/api/v1/tasks/prune").respond(200, json={"deleted": 4})
    docs = respx.get(f"{BASE}/api/v1/documents").respond(
        200, json={"documents": [{"document_id": "d", "chunks": 3, "source": "a.md"}]}
    )
    cookies = respx.put(f"{BASE}/api/v1/cookies").respond(200, json={"domains": [], "total": 0})
    with MoragClient(BASE, KEY) as morag:
        assert morag.retry("a/b").status == "queued"  # ids are quoted as one path segment
        assert morag.prune_tasks(30, status="failed").deleted == 4
        assert morag.documents().documents[0].chunks == 3
        morag.set_cookies("# Netscape HTTP Cookie File\n")
    assert json.loads(prune.calls.last.request.content) == {
        "older_than_days": 30,
        "all_users": False,
        "status": "failed",
    }
    assert cookies.calls.last.request.headers["content-type"] == "text/plain"
    assert retry.called and docs.called


async def test_async_client_same_requests(tmp_path: Path) -> None:
    src = tmp_path / "n.md"
    src.write_text("# a")
    with respx.mock:
        up = respx.post(f"{BASE}/api/v1/ingest/file").respond(202, json={"task_id": "t1", "status": "queued"})
        respx.get(f"{BASE}/api/v1/status/t1").respond(
            200, json=_task("failed", error="boom", error_class="bad_input")
        )
        respx.post(f"{BASE}/api/v1/search").respond(404, json={"code": "not_found", "message": "x"})
        async with AsyncMoragClient(BASE, KEY) as morag:
            await morag.ingest_file(src)
            task = await morag.wait("t1", poll_s=0)
            with pytest.raises(ApiError):
                await morag.search("q")
    assert task.status == "failed" and task.error_class == "bad_input"
    assert b"# a" in up.calls.last.request.content


def test_async_client_has_every_operation_of_the_sync_one() -> None:
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}  # noqa: E731
    assert public(MoragClient) - {"close", "iter_tasks"} <= public(AsyncMoragClient)


async def test_async_process_answers_task_when_slow() -> None:
    with respx.mock:
        respx.post(f"{BASE}/process/url").respond(202, json={"task_id": "t9", "status": "running"})
        respx.post(f"{BASE}/api/v1/tasks/prune").respond(200, json={"deleted": 2})
        async with AsyncMoragClient(BASE, KEY) as morag:
            assert await morag.process_url("https://example.org", wait_s=1) == TaskCreated(
                task_id="t9", status="running"
            )
            assert (await morag.prune_tasks(7)).deleted == 2
