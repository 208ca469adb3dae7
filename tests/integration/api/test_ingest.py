"""POST /api/v1/ingest/{file,url,batch}, batch status and cancel: shapes, stored fields, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.fixtures import documents
from tests.integration.api.conftest import Env, check_error, check_openapi

PDF = b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
WAV = (
    b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x80\x3e\x00\x00"
    b"\x02\x00\x10\x00data\x00\x00\x00\x00"
)
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 200


async def _job(env: Env, task_id: str) -> dict:
    return asdict(await env.state.jobs.get_any(task_id))


async def test_ingest_file_detects_type_stores_fields_and_hash(env: Env, tmp_path: Path) -> None:
    docx = documents.make_docx(tmp_path / "report.bin").read_bytes()  # the name says nothing
    resp = await env.client.post(
        "/api/v1/ingest/file",
        headers=env.alice,
        files={"file": ("report.bin", docx, "application/octet-stream")},
        data={
            "metadata": json.dumps({"project": "x"}),
            "document_id": "doc-1",
            "replace_existing": "true",
            "priority": "5",
            "chunk_size": "800",
            "chunk_overlap": "100",
            "options": '{"ocr": false}',
        },
    )
    assert resp.status_code == 202, resp.text
    body = check_openapi(resp, "/api/v1/ingest/file")
    job = await _job(env, body["task_id"])
    assert job["kind"] == "ingest" and job["content_type"] == "document" and job["lane"].startswith("cpu-")
    assert job["priority"] == 5 and job["document_id"] == "doc-1" and job["options"] == {"ocr": False}
    assert job["index_options"] == {
        "metadata": {"project": "x"},
        "replace_existing": True,
        "chunk_size": 800,
        "chunk_overlap": 100,
    }
    # The worker gets the SHA-256 computed on the way in, and the bytes are on disk.
    from tests.integration.api.conftest import claim

    (claimed,) = await claim(env, ["document"])
    import hashlib

    assert claimed["file_sha256"] == hashlib.sha256(docx).hexdigest() and claimed["file_size"] == len(docx)
    files = list((env.settings.data_dir / "files").iterdir())
    assert [f.read_bytes() == docx for f in files] == [True]


@pytest.mark.parametrize(
    ("payload", "declared", "expected", "lane"),
    [
        (PDF, None, "document", "cpu"),
        (b"just some plain words in a text file\n", None, "document", "cpu"),
        (WAV, None, "audio", "gpu"),
        (WAV, "video", "video", "gpu"),
        (b"anything at all", "echo", "echo", "cpu"),
    ],
)
async def test_ingest_file_content_types(env: Env, payload, declared, expected, lane) -> None:
    data = {"content_type": declared} if declared else {}
    resp = await env.client.post(
        "/api/v1/ingest/file", headers=env.alice, files={"file": ("x", payload)}, data=data
    )
    assert resp.status_code == 202, resp.text
    job = await _job(env, resp.json()["task_id"])
    assert job["content_type"] == expected and job["lane"].startswith(lane)


async def test_ingest_url_youtube_web_and_lane(env: Env) -> None:
    for url, expected in (
        ("https://www.youtube.com/watch?v=abc", "youtube"),
        ("https://youtu.be/abc", "youtube"),
        ("https://example.org/page", "web"),
    ):
        resp = await env.client.post("/api/v1/ingest/url", headers=env.alice, json={"url": url})
        assert resp.status_code == 202, resp.text
        check_openapi(resp, "/api/v1/ingest/url")
        job = await _job(env, resp.json()["task_id"])
        assert job["content_type"] == expected and job["source_url"] == url and job["kind"] == "ingest"
    resp = await env.client.post(
        "/api/v1/ingest/url",
        headers=env.alice,
        json={
            "url": "https://youtu.be/x",
            "lane": "cpu",
            "metadata": {"a": 1},
            "webhook_url": "http://127.0.0.1:9/hook",
        },
    )
    job = await _job(env, resp.json()["task_id"])
    assert job["lane"].startswith("cpu-") and job["index_options"]["metadata"] == {"a": 1}
    assert job["webhook_url"] == "http://127.0.0.1:9/hook"


async def test_batch_and_its_status(env: Env) -> None:
    items = [{"url": f"https://example.org/{i}", "document_id": f"d{i}"} for i in range(3)]
    resp = await env.client.post("/api/v1/ingest/batch", headers=env.alice, json={"items": items})
    assert resp.status_code == 202, resp.text
    body = check_openapi(resp, "/api/v1/ingest/batch")
    assert len(body["task_ids"]) == 3
    jobs = [await _job(env, t) for t in body["task_ids"]]
    assert {j["batch_id"] for j in jobs} == {body["batch_id"]} and [j["document_id"] for j in jobs] == [
        "d0",
        "d1",
        "d2",
    ]
    path = "/api/v1/ingest/batch/{batch_id}"
    resp = await env.client.get(f"/api/v1/ingest/batch/{body['batch_id']}", headers=env.alice)
    status = check_openapi(resp, path)
    assert status["status"] == "queued" and status["total"] == 3 and status["counts"]["queued"] == 3
    await env.client.delete(f"/api/v1/ingest/{body['task_ids'][0]}", headers=env.alice)
    status = (await env.client.get(f"/api/v1/ingest/batch/{body['batch_id']}", headers=env.alice)).json()
    assert status["status"] == "running" and status["counts"] == {
        **status["counts"],
        "queued": 2,
        "canceled": 1,
    }
    for t in body["task_ids"][1:]:
        await env.client.delete(f"/api/v1/ingest/{t}", headers=env.alice)
    status = (await env.client.get(f"/api/v1/ingest/batch/{body['batch_id']}", headers=env.alice)).json()
    assert status["status"] == "canceled"
    # Another user sees no such batch.
    resp = await env.client.get(f"/api/v1/ingest/batch/{body['batch_id']}", headers=env.bob)
    check_error(resp, path, 404, "batch_not_found")


async def test_cancel_queued_and_twice(env: Env) -> None:
    task = (
        await env.client.post("/api/v1/ingest/url", headers=env.alice, json={"url": "https://a.org"})
    ).json()
    path = "/api/v1/ingest/{task_id}"
    check_error(
        await env.client.delete(f"/api/v1/ingest/{task['task_id']}", headers=env.bob),
        path,
        404,
        "task_not_found",
    )
    resp = await env.client.delete(f"/api/v1/ingest/{task['task_id']}", headers=env.alice)
    assert check_openapi(resp, path)["status"] == "canceled"
    from tests.integration.api.conftest import claim

    assert await claim(env, ["web"], wait_s=0) == []  # a canceled job never runs
    check_error(
        await env.client.delete(f"/api/v1/ingest/{task['task_id']}", headers=env.alice),
        path,
        409,
        "task_finished",
    )


# --- bad input: a 4xx with a stable code, and nothing left on disk or in the tables ---------------------

BAD_FILE_UPLOADS = [
    ({"file": ("e.txt", b"")}, {}, 400, "empty_file"),
    ({"file": ("x.bin", ELF)}, {}, 415, "unsupported_content"),
    ({"file": ("x.pdf", PDF)}, {"content_type": "audio"}, 415, "content_mismatch"),
    ({"file": ("x.pdf", PDF)}, {"content_type": "hologram"}, 422, "validation_error"),
    ({"file": ("x.pdf", PDF)}, {"metadata": "{not json"}, 422, "invalid_json"),
    ({"file": ("x.pdf", PDF)}, {"options": "[1, 2]"}, 422, "validation_error"),
    ({"file": ("x.pdf", PDF)}, {"priority": "high"}, 422, "validation_error"),
    ({"file": ("x.pdf", PDF)}, {"lane": "tpu"}, 422, "validation_error"),
    ({"file": ("x.pdf", PDF)}, {"surprise": "field"}, 422, "validation_error"),
    ({"file": ("x.pdf", PDF)}, {"webhook_url": "ftp://example.org/x"}, 400, "webhook_unsupported_scheme"),
    ({"other": ("x.pdf", PDF)}, {}, 400, "unexpected_file"),
    (None, {"document_id": "d"}, 400, "missing_file"),
]


@pytest.mark.parametrize(("files", "data", "status", "code"), BAD_FILE_UPLOADS)
async def test_bad_file_uploads_leave_nothing(env: Env, files, data, status, code) -> None:
    before = await env.snapshot()
    if files is None:  # a multipart body with only text fields
        files = {"document_id": (None, "d")}
        data = {}
    resp = await env.client.post("/api/v1/ingest/file", headers=env.alice, files=files, data=data)
    check_error(resp, "/api/v1/ingest/file", status, code)
    assert await env.snapshot() == before


async def test_bad_multipart_bodies(env: Env) -> None:
    before = await env.snapshot()
    path = "/api/v1/ingest/file"
    resp = await env.client.post(path, headers=env.alice, json={"url": "x"})
    check_error(resp, path, 400, "expected_multipart")
    resp = await env.client.post(
        path,
        headers={**env.alice, "Content-Type": "multipart/form-data; boundary=zz"},
        content=b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
        b"\r\n%PDF-1.4 and then the body just stops",
    )
    check_error(resp, path, 400, "malformed_multipart")
    assert await env.snapshot() == before


BAD_URL_BODIES = [
    (b'{"url": "https://a.org",', 422, "invalid_json"),
    (b'{"url": 12}', 422, "validation_error"),
    (b'{"url": "file:///etc/passwd"}', 400, "unsupported_scheme"),
    (b'{"url": "ftp://example.org/a.mp3"}', 400, "unsupported_scheme"),
    (b'{"url": "https://a.org", "content_type": "hologram"}', 422, "validation_error"),
    (b'{"url": "https://a.org", "priority": "urgent"}', 422, "validation_error"),
    (b'{"url": "https://a.org", "webhook_url": "http://10.1.2.3/hook"}', 400, "webhook_private_address"),
    (b'{"url": "https://a.org", "webhook_url": "file:///tmp/x"}', 400, "webhook_unsupported_scheme"),
]


@pytest.mark.parametrize(("raw", "status", "code"), BAD_URL_BODIES)
async def test_bad_url_bodies_leave_nothing(env: Env, raw, status, code, monkeypatch) -> None:
    monkeypatch.setattr(env.settings, "webhook_allow_private", False)
    before = await env.snapshot()
    resp = await env.client.post(
        "/api/v1/ingest/url", headers={**env.alice, "Content-Type": "application/json"}, content=raw
    )
    check_error(resp, "/api/v1/ingest/url", status, code)
    assert await env.snapshot() == before


async def test_loopback_webhook_refused_unless_allowed(env: Env, monkeypatch) -> None:
    body = {"url": "https://a.org", "webhook_url": "http://127.0.0.1:8080/hook"}
    monkeypatch.setattr(env.settings, "webhook_allow_private", False)
    resp = await env.client.post("/api/v1/ingest/url", headers=env.alice, json=body)
    check_error(resp, "/api/v1/ingest/url", 400, "webhook_private_address")
    monkeypatch.setattr(env.settings, "webhook_allow_private", True)
    assert (await env.client.post("/api/v1/ingest/url", headers=env.alice, json=body)).status_code == 202


async def test_bad_batches_leave_nothing(env: Env) -> None:
    before = await env.snapshot()
    path = "/api/v1/ingest/batch"
    too_many = {"items": [{"url": f"https://a.org/{i}"} for i in range(101)]}
    check_error(await env.client.post(path, headers=env.alice, json=too_many), path, 413, "batch_too_large")
    check_error(
        await env.client.post(path, headers=env.alice, json={"items": []}), path, 422, "validation_error"
    )
    one_bad = {"items": [{"url": "https://a.org/1"}, {"url": "file:///etc/passwd"}]}
    body = check_error(
        await env.client.post(path, headers=env.alice, json=one_bad), path, 400, "unsupported_scheme"
    )
    assert body["message"].startswith("items[1]")
    assert await env.snapshot() == before


async def test_keys_are_required(env: Env) -> None:
    resp = await env.client.post("/api/v1/ingest/url", json={"url": "https://a.org"})
    check_error(resp, "/api/v1/ingest/url", 401, "unauthorized")
    resp = await env.client.post("/api/v1/ingest/url", headers=env.worker, json={"url": "https://a.org"})
    assert resp.status_code == 403 and resp.json()["code"] == "wrong_scope"


async def test_file_batch(env: Env) -> None:
    files = [("files", ("a.pdf", PDF)), ("files", ("b.wav", WAV)), ("files", ("c.txt", b"plain text here\n"))]
    resp = await env.client.post(
        "/api/v1/ingest/batch",
        headers=env.alice,
        files=files,
        data={"metadata": '{"set": 1}', "priority": "3"},
    )
    assert resp.status_code == 202, resp.text
    body = check_openapi(resp, "/api/v1/ingest/batch")
    jobs = [await _job(env, t) for t in body["task_ids"]]
    assert [j["content_type"] for j in jobs] == ["document", "audio", "document"]
    assert {j["batch_id"] for j in jobs} == {body["batch_id"]} and {j["priority"] for j in jobs} == {3}
    assert all(j["index_options"]["metadata"] == {"set": 1} and j["file_id"] for j in jobs)
    assert len(list((env.settings.data_dir / "files").iterdir())) == 3


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ([("files", ("a.pdf", PDF)), ("files", ("x.bin", ELF))], {}, 415, "unsupported_content"),
        ([("files", ("a.pdf", PDF)), ("files", ("e.txt", b""))], {}, 400, "empty_file"),
        ([("files", (f"{i}.txt", b"text\n")) for i in range(101)], {}, 413, "batch_too_large"),
        ([("files", ("a.pdf", PDF)), ("files", ("b.pdf", PDF))], {"document_id": "d"}, 400, "invalid_field"),
    ],
)
async def test_bad_file_batches_leave_nothing(env: Env, files, data, status, code) -> None:
    before = await env.snapshot()
    resp = await env.client.post("/api/v1/ingest/batch", headers=env.alice, files=files, data=data)
    check_error(resp, "/api/v1/ingest/batch", status, code)
    assert await env.snapshot() == before
