"""Safety properties a one-line change to the code once survived, checked over HTTP against real
``python -m api serve`` processes (and real ``python -m worker`` processes where a worker acts).

Each test names the break it catches (see its docstring). They use only the public HTTP surface,
so they hold whatever shape the job store or the worker runner takes inside.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROOT, LiveServer, LiveServerFactory

pytestmark = pytest.mark.timeout(120)
both_backends = pytest.mark.usefixtures("database_url")  # SQLite and a fresh PostgreSQL database

FINAL = {"succeeded", "failed", "dead", "canceled"}


# -- helpers -------------------------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit_echo(server: LiveServer, text: str, **options: Any) -> str:
    resp = server.api(
        "POST",
        "/ingest/file",
        files={"file": ("note.txt", text.encode())},
        data={"content_type": "echo", "options": json.dumps(options)},
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def status(server: LiveServer, task_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/status/{task_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def worker_call(
    server: LiveServer, path: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        headers={"Authorization": f"Bearer {key or server.worker_key}"},
        json=body,
        timeout=40,
    )


def claim(
    server: LiveServer,
    worker_id: str,
    lanes: list[str],
    content_types: list[str],
    wait_s: float = 0.0,
    max_jobs: int = 1,
    claim_id: str | None = None,
    key: str | None = None,
    retry: bool = False,
) -> list[dict[str, Any]]:
    body: dict[str, Any] = {
        "worker_id": worker_id,
        "lanes": lanes,
        "content_types": content_types,
        "wait_s": wait_s,
        "max_jobs": max_jobs,
    }
    if claim_id:
        body["claim_id"] = claim_id
    if retry:
        body["retry"] = True
    resp = worker_call(server, "/worker/claim", body, key)
    if resp.status_code == 204:
        return []
    assert resp.status_code == 200, resp.text
    return list(resp.json()["jobs"])


def start_worker(server_url: str, key: str, tmp: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (tmp / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "--api-key",
            key,
            "--server",
            server_url,
            "--name",
            name,
            "--content-types",
            "echo",
            "--lanes",
            "cpu",
            "--temp-dir",
            str(tmp / name),
            "--claim-wait",
            "2",
            "--retry-base",
            "0.2",
            "--retry-cap",
            "1",
            *args,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test starts; all killed at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: answers ``status`` to every POST, records them."""

    def __init__(self, status: int) -> None:
        calls: list[tuple[float, bytes]] = []
        self.calls = calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                calls.append((time.monotonic(), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class LosingProxy:
    """An HTTP proxy to a server that forwards everything but loses the answer of the first claim
    that leased jobs (the server leased them; the worker never hears of it), like a cut network."""

    def __init__(self, upstream: str) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_jobs: list[dict[str, Any]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                keep = ("authorization", "content-type")
                headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
                url = upstream + self.path
                resp = httpx.request(self.command, url, content=body, headers=headers, timeout=60)
                lost = self.path.startswith("/worker/claim") and resp.status_code == 200
                if lost and not proxy.held.is_set():
                    proxy.held_jobs = list(resp.json()["jobs"])
                    proxy.held.set()
                    proxy.release.wait(60)
                    self.close_connection = True
                    return  # no answer: the connection just closes
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() in ("content-type", "content-length"):
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LosingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# -- download links ------------------------------------------------------------------------------


@both_backends
def test_expired_but_validly_signed_download_link_is_refused(live_server: LiveServerFactory) -> None:
    """Break caught: ``protocol.signing.verify`` without its expiry check."""
    server = live_server(env={"MORAG_SIGNED_URL_TTL_S": "3", "MORAG_LEASE_S": "60"})
    submit_echo(server, "secret words")
    (job,) = claim(server, "w1", ["cpu"], ["echo"])
    link = job["download_url"]
    exp = int(link.split("&exp=")[1].split("&")[0])
    wk = {"Authorization": f"Bearer {server.worker_key}"}
    fresh = httpx.get(link, headers=wk, timeout=10)
    if time.time() < exp:  # answered before its time was up (a loaded machine may be slower than 3 s)
        assert fresh.status_code == 200 and fresh.content == b"secret words"
    time.sleep(max(0.0, exp - time.time()) + 1.1)
    # The very same link (signature valid, lease still held): refused once its time is up.
    late = httpx.get(link, headers=wk, timeout=10)
    assert late.status_code == 403 and late.json()["code"] == "bad_signature", late.text
    assert status(server, job["job_id"])["status"] == "running"


# -- claim_id replay and the worker's give-back of an interrupted claim --------------------------


@both_backends
def test_claim_id_replay_returns_the_same_jobs(live_server: LiveServerFactory) -> None:
    """Break caught: the claim route ignoring ``claim_id`` (no replay). A claim re-sent with
    ``retry`` gets the jobs its lost answer held; a fresh claim does not look (no extra query)."""
    server = live_server(env={"MORAG_LEASE_S": "60"})
    tasks = {submit_echo(server, f"job {i}") for i in range(2)}
    first = claim(server, "w1", ["cpu"], ["echo"], max_jobs=5, claim_id="claim-1")
    assert {j["job_id"] for j in first} == tasks
    assert claim(server, "w1", ["cpu"], ["echo"], max_jobs=5, claim_id="claim-1") == []
    again = claim(server, "w1", ["cpu"], ["echo"], max_jobs=5, claim_id="claim-1", wait_s=1, retry=True)
    key = {(j["job_id"], j["lease_token"], j["attempt"]) for j in first}
    assert {(j["job_id"], j["lease_token"], j["attempt"]) for j in again} == key
    assert claim(server, "w1", ["cpu"], ["echo"], max_jobs=5, claim_id="claim-2") == []
    for task in tasks:
        st = status(server, task)
        assert st["status"] == "running" and st["attempts"] == 1


@both_backends
def test_worker_gives_back_a_claim_whose_answer_it_lost(
    live_server: LiveServerFactory, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Break caught: the worker not giving back an interrupted claim on stop (job held until the
    lease ends) or the replay not finding the claim's jobs."""
    server = live_server(env={"MORAG_LEASE_S": "60"})
    task = submit_echo(server, "lost answer")
    with LosingProxy(server.url) as proxy:
        worker = start_worker(proxy.url, server.worker_key, tmp_path, "wl")
        procs.append(worker)
        assert proxy.held.wait(30), (tmp_path / "wl.log").read_text()
        assert [j["job_id"] for j in proxy.held_jobs] == [task]
        assert status(server, task)["status"] == "running"  # leased for 60 s; the worker never heard
        worker.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert worker.wait(20) == 0, (tmp_path / "wl.log").read_text()
    st = wait_for(lambda: (s := status(server, task))["status"] == "queued" and s, 10, "the job to be queued")
    assert time.monotonic() - stopped < 15  # far below the 60 s lease: given back, not expired
    assert st["attempts"] <= 1
    (again,) = claim(server, "w2", ["cpu"], ["echo"])
    assert again["job_id"] == task


# -- fallback timing (real waits) ----------------------------------------------------------------


@both_backends
def test_gpu_job_falls_back_to_cpu_not_before_the_delay_and_soon_after(
    live_server: LiveServerFactory, tmp_path: Path
) -> None:
    """Breaks caught: the fallback delay scaled (x1000: never falls back here) or dropped (falls back
    at once)."""
    delay = 3.0
    server = live_server(env={"MORAG_FALLBACK_AFTER_S": str(delay), "MORAG_LEASE_S": "60"})
    assert claim(server, "gpu-box", ["gpu"], ["audio"]) == []  # a live GPU worker of alice's
    audio = {"url": "https://example.org/a.mp3", "content_type": "audio"}
    resp = server.api("POST", "/ingest/url", json=audio)
    assert resp.status_code == 202, resp.text
    task = resp.json()["task_id"]
    submitted = time.monotonic()
    assert claim(server, "cpu-box", ["cpu"], ["audio"]) == []  # the GPU lane has it, for now
    time.sleep(delay / 2)
    assert claim(server, "cpu-box", ["cpu"], ["audio"]) == []
    assert time.monotonic() - submitted < delay - 0.3  # the checks above ran before the delay
    got = claim(server, "cpu-box", ["cpu"], ["audio"], wait_s=delay * 4)
    waited = time.monotonic() - submitted
    assert [j["job_id"] for j in got] == [task], f"no fallback {waited:.1f} s after submit"
    assert delay - 0.5 <= waited <= delay + 4, waited
    assert status(server, task)["worker_id"] == "cpu-box"


@both_backends
def test_job_falls_back_to_shared_workers_not_before_the_delay_and_soon_after(
    live_server: LiveServerFactory,
) -> None:
    """Breaks caught: the shared fallback delay scaled (x1000) or dropped."""
    delay = 3.0
    server = live_server(env={"MORAG_SHARED_FALLBACK_AFTER_S": str(delay), "MORAG_LEASE_S": "60"})
    server.cli("users", "create", "operator")
    shared_key = server.create_key("operator", "shared-worker")
    assert claim(server, "own-box", ["cpu"], ["audio"]) == []  # a live CPU worker of alice's
    task = submit_echo(server, "for whoever is free")
    submitted = time.monotonic()
    assert claim(server, "op-1", ["cpu"], ["echo"], key=shared_key) == []  # alice's lane has it, for now
    time.sleep(delay / 2)
    assert claim(server, "op-1", ["cpu"], ["echo"], key=shared_key) == []
    assert time.monotonic() - submitted < delay - 0.3  # the checks above ran before the delay
    got = claim(server, "op-1", ["cpu"], ["echo"], wait_s=delay * 4, key=shared_key)
    waited = time.monotonic() - submitted
    assert [j["job_id"] for j in got] == [task], f"no shared fallback {waited:.1f} s after submit"
    assert delay - 0.5 <= waited <= delay + 4, waited


# -- webhooks ------------------------------------------------------------------------------------


@both_backends
def test_webhook_retries_stop_at_the_limit(live_server: LiveServerFactory) -> None:
    """Backoff 0.25 s doubling, each wait jittered to 1/2..1 of its step, a 1.25 s retry window:
    waits of 0.125-0.25, 0.25-0.5, 0.5-1 and 1-2 s, so tries at 0, by 0.25, by 0.75 and maybe one
    more by 1.25 s; then none. Break caught: the give-up check removed (a try after the window,
    at the latest 1.25 + 2 s after the first)."""
    window = 1.25
    server = live_server(
        env={
            "MORAG_WEBHOOK_ALLOW_PRIVATE": "true",
            "MORAG_WEBHOOK_BACKOFF_BASE_S": "0.25",
            "MORAG_WEBHOOK_RETRY_S": str(window),
        }
    )
    with Receiver(500) as rx:
        resp = server.api("POST", "/ingest/url", json={"url": "https://example.org/a", "webhook_url": rx.url})
        assert resp.status_code == 202, resp.text
        task = resp.json()["task_id"]
        assert server.api("DELETE", f"/ingest/{task}").status_code == 200
        wait_for(lambda: len(rx.calls) >= 3, 15, "three webhook tries")
        time.sleep(max(rx.calls[0][0] + window + 2.5 - time.monotonic(), 0))  # past any late try
        times = [t for t, _ in rx.calls]
    assert len(times) in (3, 4), f"{len(times)} tries"
    assert times[-1] - times[0] <= window + 0.5, times  # none after the window
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.12 and gaps[1] >= 0.24, gaps  # never sooner than half the doubling step
    assert json.loads(rx.calls[0][1])["status"] == "canceled"


# -- leases and heartbeats -----------------------------------------------------------------------


@both_backends
def test_heartbeats_extend_the_lease_and_silence_loses_it(live_server: LiveServerFactory) -> None:
    """Breaks caught: a heartbeat that does not push the lease out (the beating job is reaped), and
    a reaper that never reclaims expired leases (the silent job stays running)."""
    lease = 2.0
    server = live_server(env={"MORAG_LEASE_S": str(lease), "MORAG_REAPER_INTERVAL_S": "0.2"})
    tasks = [submit_echo(server, "beating"), submit_echo(server, "silent")]
    jobs = {j["job_id"]: j for j in claim(server, "w1", ["cpu"], ["echo"], max_jobs=2)}
    beating, silent = jobs[tasks[0]], jobs[tasks[1]]
    end = time.monotonic() + lease * 2.5
    while time.monotonic() < end:
        resp = worker_call(
            server,
            "/worker/heartbeat",
            {"job_id": beating["job_id"], "lease_token": beating["lease_token"], "progress": 0.5},
        )
        assert resp.status_code == 200, resp.text
        time.sleep(lease / 5)
    st = status(server, beating["job_id"])
    assert st["status"] == "running" and st["attempts"] == 1
    wait_for(lambda: status(server, silent["job_id"])["status"] == "queued", 5, "the silent job reaped")
    resp = worker_call(
        server,
        "/worker/complete",
        {"job_id": beating["job_id"], "lease_token": beating["lease_token"], "markdown": "# done"},
    )
    assert resp.status_code == 200, resp.text
    resp = worker_call(
        server,
        "/worker/heartbeat",
        {"job_id": silent["job_id"], "lease_token": silent["lease_token"]},
    )
    assert resp.status_code == 409, resp.text  # its lease is gone


# -- two server processes on one PostgreSQL database ---------------------------------------------


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database copied from the migrated template."""
    import asyncio

    import asyncpg

    from tests.conftest import PG_URL

    admin = PG_URL.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = f"morag_two_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
def test_two_servers_one_database_every_job_done_exactly_once(
    live_server: LiveServerFactory,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    pg_database: str,
) -> None:
    """Four worker processes claim over HTTP from two server processes sharing one PostgreSQL
    database: every job is done once (one attempt, one worker, its own result)."""
    database_url = pg_database
    # One deployment: the same database, secret (download links) and file store (uploads).
    shared = tmp_path / "shared-data"
    env = {"MORAG_SECRET_KEY": "shared-secret", "MORAG_LEASE_S": "30", "MORAG_DATA_DIR": str(shared)}
    a = live_server(env=env, database_url=database_url)
    b = live_server(env=env, database_url=database_url)
    for i, server in enumerate((a, b, a, b)):
        procs.append(start_worker(server.url, server.worker_key, tmp_path, f"w{i}"))
    texts = {}
    for i in range(24):
        server = (a, b)[i % 2]
        text = f"document number {i}"
        # /process (no indexing: a local vector store is one process' alone).
        resp = httpx.post(
            f"{server.url}/process/file?wait_s=0",
            headers={"Authorization": f"Bearer {server.client_key}"},
            files={"file": ("note.txt", text.encode())},
            data={"content_type": "echo", "options": json.dumps({"sleep_s": 0.2})},
            timeout=10,
        )
        assert resp.status_code == 202, resp.text
        texts[resp.json()["task_id"]] = text
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 90
    while len(done) < len(texts) and time.monotonic() < deadline:
        for task in set(texts) - set(done):
            st = status((a, b)[len(done) % 2], task)
            if st["status"] in FINAL:
                done[task] = st
        time.sleep(0.2)
    assert len(done) == len(texts), f"{len(done)}/{len(texts)} final"
    for task, st in done.items():
        assert st["status"] == "succeeded" and st["attempts"] == 1, st
        assert texts[task] in st["result"]["markdown"]
    logs = {i: (tmp_path / f"w{i}.log").read_text() for i in range(4)}
    for task in texts:
        claimed = [i for i, log in logs.items() if f"job {task} [echo] claimed" in log]
        delivered = [i for i, log in logs.items() if f"job {task}: result delivered" in log]
        assert len(claimed) == 1 and delivered == claimed, (task, claimed, delivered)
    busy = {st["worker_id"] for st in done.values()}
    assert len(busy) >= 2, busy
