"""Artifacts end to end: a real server process, a real worker process, a generated video.

The client asks for a thumbnail; the worker extracts it, uploads it under its lease and completes;
the client downloads it. A second test times a 10 MB upload over real HTTP (printed with -s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from protocol.models import ArtifactResponse
from tests.fixtures import media
from tests.integration.conftest import LiveServerFactory
from worker.client import WorkerClient

pytestmark = pytest.mark.timeout(120)


def test_video_thumbnail_reaches_the_client(live_server: LiveServerFactory, tmp_path: Path) -> None:
    server = live_server()
    video = media.make_video(tmp_path / "talk.mp4", media.speech_wav(tmp_path / "talk.wav"), seconds=12)
    resp = httpx.post(
        f"{server.url}/process/file?wait_s=0",
        headers={"Authorization": f"Bearer {server.client_key}"},
        timeout=30,
        files={"file": ("talk.mp4", video.read_bytes())},
        data={"content_type": "video", "options": json.dumps({"thumbnails": True})},
    )
    assert resp.status_code == 202, resp.text
    task = resp.json()["task_id"]
    worker = server.start_worker(
        tmp_path / "worker.log",
        "--content-types",
        "video",
        "--lanes",
        "gpu",
        "--device",
        "cpu",
        "--once",
        "--whisper-model",
        str(media.tiny_en_model()),
        "--temp-dir",
        str(tmp_path / "w"),
    )
    start = time.monotonic()
    try:
        assert worker.wait(90) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    took = time.monotonic() - start
    st = server.api("GET", f"/status/{task}").json()
    assert st["status"] == "succeeded", st
    (art,) = st["artifacts"]
    assert art["name"] == "thumbnail.jpg" and art["mime"] == "image/jpeg"
    assert st["result"]["metadata"]["artifacts"] == ["thumbnail.jpg"]
    assert "result delivered (1 artifact(s))" in (tmp_path / "worker.log").read_text()
    got = httpx.get(art["url"], headers={"Authorization": f"Bearer {server.client_key}"}, timeout=10)
    assert got.status_code == 200 and got.content[:3] == b"\xff\xd8\xff"  # a JPEG
    assert len(got.content) == art["size"] and hashlib.sha256(got.content).hexdigest() == art["sha256"]
    assert httpx.get(art["url"], headers={"Authorization": f"Bearer {server.worker_key}"}).status_code == 403
    print(f"\nvideo job with a thumbnail, worker start -> done: {took:.2f} s ({art['size']} byte thumbnail)")


async def _upload(client: WorkerClient, job_id: str, token: str, path: Path) -> ArtifactResponse:
    try:
        return await client.upload_artifact(job_id, token, path, "big.bin")
    finally:
        await client.aclose()


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
def test_10mb_artifact_upload_over_http(live_server: LiveServerFactory, tmp_path: Path) -> None:
    server = live_server()
    resp = httpx.post(
        f"{server.url}/process/file?wait_s=0",
        headers={"Authorization": f"Bearer {server.client_key}"},
        files={"file": ("n.txt", b"hi")},
        data={"content_type": "echo"},
    )
    assert resp.status_code == 202, resp.text
    worker = {"Authorization": f"Bearer {server.worker_key}"}
    claim = httpx.post(
        f"{server.url}/worker/claim",
        headers=worker,
        timeout=30,
        json={"worker_id": "bench", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 5},
    )
    (job,) = claim.json()["jobs"]
    data = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    params = {"job_id": job["job_id"], "name": "big.bin"}
    lease = {**worker, "X-Lease-Token": job["lease_token"]}
    times = []
    for _ in range(3):  # the same name again replaces it: three timed uploads
        start = time.monotonic()
        up = httpx.post(
            f"{server.url}/worker/artifact", params=params, content=data, headers=lease, timeout=60
        )
        times.append(time.monotonic() - start)
        assert up.status_code == 200, up.text
        assert up.json()["sha256"] == hashlib.sha256(data).hexdigest() and up.json()["size"] == len(data)
    # The worker's own client streams the file from disk in 1 MiB chunks.
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    client = WorkerClient(server.url, server.worker_key)
    start = time.monotonic()
    got = asyncio.run(_upload(client, job["job_id"], job["lease_token"], path))
    client_s = time.monotonic() - start
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    stored = server.data_dir / "artifacts" / job["job_id"]
    assert [p.name for p in stored.iterdir()] == ["big.bin"]
    best = min(times)
    print(
        f"\n10 MiB artifact upload over 127.0.0.1: best {best * 1000:.0f} ms of {len(times)} "
        f"({len(data) / best / 1e6:.0f} MB/s); the worker's client, from disk: {client_s * 1000:.0f} ms"
    )
    assert best < 5


async def test_refusals_reach_the_worker_before_a_large_body_is_sent(
    live_server: LiveServerFactory, tmp_path: Path
) -> None:
    """413 / 409 come back as answers (not broken connections retried until the deadline)."""
    from worker.client import LeaseLost, ServerRejected, WorkerClient

    server = live_server(env={"MORAG_MAX_ARTIFACT_BYTES": "20000000"})
    client = WorkerClient(server.url, server.worker_key, retry_base_s=0.05, max_time_s=20)
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{server.url}/process/file?wait_s=0",
            headers={"Authorization": f"Bearer {server.client_key}"},
            files={"file": ("n.txt", b"hi")},
            data={"content_type": "echo"},
        )
    assert resp.status_code == 202, resp.text
    from protocol.models import ClaimRequest
    from protocol.states import ContentType, LaneKind

    (job,) = await client.claim(
        ClaimRequest(worker_id="w", lanes=[LaneKind.cpu], content_types=[ContentType.echo], wait_s=5)
    )
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 30_000_000)
    start = time.monotonic()
    with pytest.raises(ServerRejected) as err:
        await client.upload_artifact(job.job_id, job.lease_token, big, "big.bin")
    assert err.value.code == "artifact_too_large"
    fits = tmp_path / "fits.bin"
    fits.write_bytes(b"x" * 15_000_000)  # within the limit: refused for the lease, before it is read
    with pytest.raises(LeaseLost):
        await client.upload_artifact(job.job_id, "stale", fits, "fits.bin")
    took = time.monotonic() - start
    await client.aclose()
    assert took < 5, took
    assert not list((server.data_dir / "artifacts").rglob("*.bin"))
