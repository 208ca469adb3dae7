"""The runner against a respx-mocked server: the happy path, cancel, stale lease, shutdown, outages."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from worker.client import WorkerClient
from worker.config import WorkerConfig
from worker.runner import Runner

BASE = "http://srv.test"


class FakeServer:
    """Hands out the queued jobs once, then answers 204; records what the worker sent."""

    def __init__(self, mock: respx.MockRouter, lease_s: float = 0.6) -> None:
        self.queue: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.claims: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.completed: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.heartbeat_answer: Any = None  # None: extend; else an httpx.Response to send
        self.complete_outage = 0  # this many complete calls fail with a connection error
        self.lease_s = lease_s
        self.on_complete: Any = None  # called with each complete request, outage or not
        self.on_claim: Any = None
        self.events: list[str] = []  # "artifact NAME" / "complete JOB", in arrival order
        self.uploads: list[tuple[dict[str, str], bytes]] = []
        self.artifact_answer: Any = None  # an httpx.Response to send instead of storing
        self.artifact_down: set[str] = set()  # names whose upload meets a dead server
        self.artifact_delay_s = 0.0
        self.complete_started: list[str] = []
        self.complete_delays: dict[str, float] = {}  # job id -> seconds each complete call takes
        self.features: list[str] = []  # "claim-results": results may ride on claims
        self.completed_at: dict[str, float] = {}  # job id -> monotonic time the result arrived
        # Standby claims ("claim-standby"): each waits for standby_ready() (when set), then takes
        # the first of standby_queue; hold_standby keeps them open until the client gives up.
        self.standby_queue: list[dict[str, Any]] = []
        self.standby_ready: Any = None
        self.hold_standby = False
        self.standby_leased: dict[str, list[dict[str, Any]]] = {}  # claim id -> jobs
        self.requeue_given_back = False  # a job failed with class "shutdown" is queued again
        self.jobs: dict[str, dict[str, Any]] = {}  # every job added, by id
        mock.get(f"{BASE}/worker/hello").mock(side_effect=self._hello)
        mock.post(f"{BASE}/worker/claim").mock(side_effect=self._claim)
        mock.post(f"{BASE}/worker/heartbeat").mock(side_effect=self._heartbeat)
        mock.post(f"{BASE}/worker/complete").mock(side_effect=self._complete)
        mock.post(f"{BASE}/worker/complete-batch").mock(side_effect=self._complete_batch)
        mock.post(f"{BASE}/worker/fail").mock(side_effect=self._fail)
        mock.get(url__regex=rf"{BASE}/files/.*").mock(side_effect=self._file)
        mock.post(f"{BASE}/worker/artifact").mock(side_effect=self._artifact)

    def add(self, job_id: str, content: bytes = b"hello", *, standby: bool = False, **options: Any) -> None:
        self.files[job_id] = content
        job = self.jobs[job_id] = {
            "job_id": job_id,
            "lease_token": f"tok-{job_id}",
            "lease_expires_at": "2030-01-01T00:00:00Z",
            "attempt": 1,
            "content_type": "echo",
            "options": options,
            "file_name": f"{job_id}.txt",
            "download_url": f"{BASE}/files/{job_id}?sig=x",
            "file_size": len(content),
            "file_sha256": hashlib.sha256(content).hexdigest(),
        }
        (self.standby_queue if standby else self.queue).append(job)

    def _hello(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "protocol_version": "1",
                "server_version": "t",
                "user": "u",
                "scope": "worker",
                "lanes": ["gpu", "cpu"],
                "lease_s": self.lease_s,
                "max_claim_wait_s": 30,
                "features": self.features,
            },
        )

    async def _claim(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.claims.append(body)
        if self.on_claim:
            self.on_claim(body)
        if body.get("standby"):
            return await self._standby_claim(body)
        if body.get("results"):  # answered at once, as the real server does
            done = []
            for result in body["results"]:
                self.completed.append(result)
                self.completed_at[result["job_id"]] = time.monotonic()
                done.append({"job_id": result["job_id"], "status": "succeeded"})
            jobs, self.queue = self.queue[: body["max_jobs"]], self.queue[body["max_jobs"] :]
            return httpx.Response(200, json={"jobs": jobs, "results": done})
        if not self.queue and self.standby_queue and not self.hold_standby:
            self.queue.append(self.standby_queue.pop(0))  # queued for every claim, as on a server
        if not self.queue:
            await asyncio.sleep(min(body["wait_s"], 0.05))
            return httpx.Response(204)
        jobs, self.queue = self.queue[: body["max_jobs"]], self.queue[body["max_jobs"] :]
        return httpx.Response(200, json={"jobs": jobs})

    async def _standby_claim(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("retry"):  # a claim given back: what it held
            return httpx.Response(200, json={"jobs": self.standby_leased.pop(body["claim_id"], [])})
        if self.hold_standby:
            self.standby_leased[body["claim_id"]] = self.standby_queue[:1]
            del self.standby_queue[:1]
            await asyncio.sleep(10)  # the answer never comes in time
        while self.standby_ready is not None and not self.standby_ready():
            await asyncio.sleep(0.005)
        if not self.standby_queue:
            await asyncio.sleep(min(body["wait_s"], 0.05))
            return httpx.Response(204)
        return httpx.Response(200, json={"jobs": [self.standby_queue.pop(0)]})

    def _heartbeat(self, request: httpx.Request) -> httpx.Response:
        self.heartbeats.append(json.loads(request.content))
        if self.heartbeat_answer is not None:
            return self.heartbeat_answer  # type: ignore[no-any-return]
        return httpx.Response(200, json={"lease_expires_at": "2030-01-01T00:00:00Z", "canceled": False})

    async def _complete(self, request: httpx.Request) -> httpx.Response:
        job_id = json.loads(request.content)["job_id"]
        self.complete_started.append(job_id)
        await asyncio.sleep(self.complete_delays.get(job_id, 0.0))
        if self.on_complete:
            self.on_complete(request)
        if self.complete_outage > 0:
            self.complete_outage -= 1
            raise httpx.ConnectError("server down")
        body = json.loads(request.content)
        self.events.append(f"complete {body['job_id']}")
        self.completed.append(body)
        return httpx.Response(200, json={"job_id": body["job_id"], "status": "succeeded"})

    async def _complete_batch(self, request: httpx.Request) -> httpx.Response:
        """Results finishing in the same moment arrive together, as a real server takes them."""
        if self.on_complete:
            self.on_complete(request)
        if self.complete_outage > 0:
            self.complete_outage -= 1
            raise httpx.ConnectError("server down")
        answers = []
        for body in json.loads(request.content)["results"]:
            self.complete_started.append(body["job_id"])
            self.events.append(f"complete {body['job_id']}")
            self.completed.append(body)
            answers.append({"job_id": body["job_id"], "status": "succeeded"})
        return httpx.Response(200, json={"results": answers})

    async def _artifact(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        assert "lease_token" not in params  # tokens never travel in URLs (they get logged)
        params["lease_token"] = request.headers["x-lease-token"]
        data = await request.aread()
        await asyncio.sleep(self.artifact_delay_s)
        if params["name"] in self.artifact_down:
            raise httpx.ConnectError("server down")
        if self.artifact_answer is not None:
            return self.artifact_answer  # type: ignore[no-any-return]
        self.events.append(f"artifact {params['name']}")
        self.uploads.append((params, data))
        digest = hashlib.sha256(data).hexdigest()
        return httpx.Response(
            200,
            json={
                "job_id": params["job_id"],
                "name": params["name"],
                "size": len(data),
                "sha256": digest,
                "mime": "image/jpeg",
            },
        )

    def _fail(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.failed.append(body)
        if self.requeue_given_back and body["error_class"] == "shutdown":
            self.queue.append(self.jobs[body["job_id"]])
        return httpx.Response(200, json={"job_id": body["job_id"], "status": "queued"})

    def _file(self, request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, content=self.files[job_id])


@pytest.fixture
def server() -> Any:
    with respx.mock(assert_all_called=False) as mock:
        yield FakeServer(mock)


def make_runner(tmp_path: Path, **kw: Any) -> Runner:
    kw.setdefault("content_types", ["echo"])
    cfg = WorkerConfig(
        api_key="K",
        server=BASE,
        temp_dir=tmp_path / "tmp",
        claim_wait_s=0.05,
        retry_base_s=0.01,
        retry_cap_s=0.05,
        **kw,
    )
    client = WorkerClient(BASE, "K", retry_base_s=0.01, retry_cap_s=0.05, max_tries=3, max_time_s=2)
    return Runner(cfg, client)


async def run_until(runner: Runner, cond: Any, timeout: float = 20.0, stop: bool = True) -> int:
    task = asyncio.ensure_future(runner.run(install_signals=False))
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        assert not task.done(), f"runner ended early: {task.result()}"
        await asyncio.sleep(0.02)
    if stop:
        runner.request_stop()
    return await asyncio.wait_for(task, 10)


def leftovers(runner: Runner) -> list[Path]:
    return list(runner.config.jobs_dir.iterdir()) if runner.config.jobs_dir.exists() else []


async def test_job_runs_and_completes(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", b"hello world", sleep_s=0.5)
    runner = make_runner(tmp_path)
    assert await run_until(runner, lambda: server.completed) == 0
    done = server.completed[0]
    assert done["lease_token"] == "tok-J1" and "hello world" in done["markdown"]
    assert done["metadata"]["characters"] == 11
    assert server.heartbeats and all(0.1 <= hb["progress"] <= 0.95 for hb in server.heartbeats)
    assert any("processing" in hb["message"] for hb in server.heartbeats)
    assert not server.failed and leftovers(runner) == []
    assert not list(runner.config.spool.glob("*.json"))


async def test_claims_only_free_slots(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=0.6)
    runner = make_runner(tmp_path, concurrency=3)
    await run_until(runner, lambda: len(server.claims) >= 3 and runner.jobs)
    assert server.claims[0]["max_jobs"] == 3
    assert all(c["max_jobs"] == 2 for c in server.claims[1:])


async def test_full_slots_stop_claiming(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=0.5)
    runner = make_runner(tmp_path, concurrency=1)
    busy: list[int] = []
    server.on_claim = lambda body: busy.append(len(runner.processing))
    await run_until(runner, lambda: server.completed and len(server.claims) >= 2)
    assert busy[0] == 0 and busy[1:] and all(b == 0 for b in busy)  # no claim while the one slot was taken


async def test_cancel_via_heartbeat_stops_at_once(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=30)
    server.heartbeat_answer = httpx.Response(
        200, json={"lease_expires_at": "2030-01-01T00:00:00Z", "canceled": True}
    )
    runner = make_runner(tmp_path)
    task = asyncio.ensure_future(runner.run(install_signals=False))
    while not server.heartbeats:  # the first heartbeat says "canceled"
        assert not task.done()
        await asyncio.sleep(0.01)
    start = time.monotonic()
    while not runner.finished:
        assert time.monotonic() - start < 3, "the canceled job did not stop"
        await asyncio.sleep(0.02)
    runner.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert runner.finished[0].outcome == "canceled"
    assert not server.completed and not server.failed
    assert leftovers(runner) == []


async def test_stale_lease_409_stops_without_reporting(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=30)
    server.heartbeat_answer = httpx.Response(409, json={"code": "stale_lease", "message": "gone"})
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: runner.finished)
    assert runner.finished[0].outcome == "lease lost"
    assert not server.completed and not server.failed and leftovers(runner) == []


async def test_shutdown_gives_the_lease_back_after_grace(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=30)
    runner = make_runner(tmp_path, grace_s=0.3)
    stopped: list[float] = []

    def processing() -> bool:
        if runner.jobs and runner.jobs["J1"].progress.phase == "processing":
            stopped.append(time.monotonic())  # run_until asks for the stop right after this
            return True
        return False

    await run_until(runner, processing)
    assert time.monotonic() - stopped[0] < 3  # grace 0.3 s, then the lease is given back
    assert [f["error_class"] for f in server.failed] == ["shutdown"]
    assert server.failed[0]["retryable"] is True and server.failed[0]["lease_token"] == "tok-J1"
    assert not server.completed and leftovers(runner) == []


async def test_shutdown_lets_a_job_finish_within_grace(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", sleep_s=0.4)
    server.add("J2")
    runner = make_runner(tmp_path, grace_s=5)
    at_stop: list[int] = []

    def processing() -> bool:
        if runner.jobs and "J1" in runner.jobs and runner.jobs["J1"].progress.phase == "processing":
            at_stop.append(len(server.claims))  # run_until stops the runner right after this
            return True
        return False

    await run_until(runner, processing)
    assert [c["job_id"] for c in server.completed] == ["J1"] and not server.failed
    assert len(server.claims) == at_stop[0]  # nothing claimed after the stop (J2 stays queued)


async def test_processing_error_is_reported_final(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", b"\xff\xfe not utf-8")
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: server.failed)
    fail = server.failed[0]
    assert fail["error_class"] == "bad_input" and fail["retryable"] is False
    assert "UTF-8" in fail["error"] and leftovers(runner) == []


async def test_checksum_mismatch_is_retryable(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", b"hello")
    server.files["J1"] = b"HELLO"
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: server.failed)
    assert server.failed[0]["error_class"] == "transient" and server.failed[0]["retryable"] is True


async def test_result_is_spooled_and_delivered_after_an_outage(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", b"precious")
    server.complete_outage = 4  # the first attempts meet a dead server
    runner = make_runner(tmp_path, spool_after_s=0.0)  # every job counts as long: spooled first
    spooled: list[bool] = []
    server.on_complete = lambda request: spooled.append((runner.config.spool / "J1.json").exists())
    await run_until(runner, lambda: server.completed)
    assert len(spooled) == 5 and all(spooled)
    assert "precious" in server.completed[0]["markdown"]
    assert not (runner.config.spool / "J1.json").exists()


async def test_a_quick_result_is_sent_from_memory_and_spooled_only_when_the_server_is_gone(
    server: FakeServer, tmp_path: Path
) -> None:
    server.add("J1", b"quick one")
    runner = make_runner(tmp_path, spool_after_s=60.0)
    on_disk: list[bool] = []
    server.on_complete = lambda request: on_disk.append(runner.config.spool.exists())
    await run_until(runner, lambda: server.completed)
    assert on_disk == [False]  # no spool entry was written (nor its folder made) for a quick job
    assert not list(runner.config.jobs_dir.iterdir())  # nor a temp dir left behind

    server.add("J2", b"kept when unreachable")
    server.complete_outage = 10_000  # the server never answers: the send gives up
    runner = make_runner(tmp_path, spool_after_s=60.0)
    await run_until(runner, lambda: (runner.config.spool / "J2.json").exists(), timeout=30)
    entry = json.loads((runner.config.spool / "J2.json").read_text())
    assert entry["lease_token"] == "tok-J2" and "kept when unreachable" in entry["markdown"]
    assert not server.completed[1:]

    server.complete_outage = 0  # back: the next start delivers it
    again = make_runner(tmp_path, spool_after_s=60.0)
    await run_until(again, lambda: len(server.completed) == 2)
    assert server.completed[1]["job_id"] == "J2" and not (runner.config.spool / "J2.json").exists()


async def test_spooled_result_is_delivered_on_start(server: FakeServer, tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    runner.config.spool.mkdir(parents=True)
    entry = {
        "job_id": "OLD",
        "lease_token": "tok-OLD",
        "saved_at": time.time(),
        "deliver_until": time.time() + 30,
        "markdown": "# from before",
        "metadata": {},
    }
    (runner.config.spool / "OLD.json").write_text(json.dumps(entry))
    await run_until(runner, lambda: server.completed)
    assert server.completed[0]["job_id"] == "OLD" and server.completed[0]["markdown"] == "# from before"
    assert not (runner.config.spool / "OLD.json").exists()


async def test_once_processes_one_job_and_exits(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1")
    server.add("J2")
    runner = make_runner(tmp_path, once=True)
    code = await asyncio.wait_for(runner.run(install_signals=False), 10)
    assert code == 0 and [c["job_id"] for c in server.completed] == ["J1"]
    assert server.claims[0]["max_jobs"] == 1


async def test_bad_key_exits_2(tmp_path: Path) -> None:
    with respx.mock:
        respx.get(f"{BASE}/worker/hello").respond(
            401, json={"code": "unauthorized", "message": "unknown key"}
        )
        assert await make_runner(tmp_path).run(install_signals=False) == 2


@pytest.fixture
def with_artifacts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo job also returns the files named in its option ``artifacts`` (as video returns frames)."""
    from worker import slots as slots_module

    real = slots_module.execute

    def execute(inp: Any, config: Any, canceled: Any) -> Any:
        result = real(inp, config, canceled)
        inp.temp_dir.mkdir(parents=True, exist_ok=True)  # echo itself needs no temp dir
        for name in inp.options.get("artifacts", []):
            path = inp.temp_dir / name
            path.write_bytes(f"bytes of {name}".encode() if name != "empty.jpg" else b"")
            result.artifacts.append(path)
        result.metadata["artifacts"] = [{"file": p.name} for p in result.artifacts]
        return result

    monkeypatch.setattr(slots_module, "execute", execute)
    # The patch reaches only this process: run these jobs in threads.
    from worker import runner as runner_module

    monkeypatch.setattr(
        runner_module,
        "make_pool",
        lambda cfg, size, _isolation, **kw: slots_module.make_pool(cfg, size, "thread"),
    )


def spool_files(runner: Runner) -> list[Path]:
    return list(runner.config.spool.rglob("*")) if runner.config.spool.exists() else []


@pytest.mark.usefixtures("with_artifacts")
async def test_artifacts_are_uploaded_before_complete(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", artifacts=["thumbnail.jpg", "key frame.jpg", ".hidden.jpg", "empty.jpg"])
    server.artifact_delay_s = 0.3  # slower than a heartbeat: the progress shows the upload
    runner = make_runner(tmp_path)
    assert await run_until(runner, lambda: server.completed) == 0
    names = ["thumbnail.jpg", "key_frame.jpg", "hidden.jpg"]  # made safe; the empty file is skipped
    assert server.events == [*(f"artifact {n}" for n in names), "complete J1"]
    assert [p for p, _ in server.uploads] == [
        {"job_id": "J1", "lease_token": "tok-J1", "name": n} for n in names
    ]
    assert server.uploads[0][1] == b"bytes of thumbnail.jpg"
    assert server.completed[0]["metadata"]["artifacts"] == names
    messages = [hb["message"] for hb in server.heartbeats]
    assert any("upload artifact 1/3" in m for m in messages), messages
    assert spool_files(runner) == [] and leftovers(runner) == []


@pytest.mark.usefixtures("with_artifacts")
@pytest.mark.parametrize("code", ["stale_lease", "job_canceled"])
async def test_artifact_409_stops_the_job(server: FakeServer, tmp_path: Path, code: str) -> None:
    server.add("J1", artifacts=["a.jpg", "b.jpg"])
    server.artifact_answer = httpx.Response(409, json={"code": code, "message": "gone"})
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: runner.finished)
    assert runner.finished[0].outcome == "undelivered"
    assert not server.completed and not server.failed and not server.uploads
    assert spool_files(runner) == [] and leftovers(runner) == []


@pytest.mark.usefixtures("with_artifacts")
async def test_refused_artifact_fails_the_job_for_good(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1", artifacts=["huge.jpg"])
    server.artifact_answer = httpx.Response(413, json={"code": "artifact_too_large", "message": "too big"})
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: server.failed)
    (fail,) = server.failed
    assert (
        fail["retryable"] is False and "huge.jpg" in fail["error"] and "artifact_too_large" in fail["error"]
    )
    assert not server.completed and spool_files(runner) == []


@pytest.mark.usefixtures("with_artifacts")
async def test_outage_keeps_artifacts_in_the_spool_and_a_restart_resumes(
    server: FakeServer, tmp_path: Path
) -> None:
    server.add("J1", artifacts=["a.jpg", "b.jpg"])
    server.artifact_down = {"b.jpg"}
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: runner.finished, timeout=10)
    assert runner.finished[0].outcome == "undelivered" and not server.completed
    entry = json.loads((runner.config.spool / "J1.json").read_text())
    assert entry["artifacts"] == [{"name": "a.jpg", "uploaded": True}, {"name": "b.jpg", "uploaded": False}]
    assert (runner.config.spool / "J1.files" / "b.jpg").read_bytes() == b"bytes of b.jpg"
    assert leftovers(runner) == []  # the job's temp dir is gone; the spool kept its files
    server.artifact_down = set()
    again = make_runner(tmp_path)
    await run_until(again, lambda: server.completed)
    assert server.events == ["artifact a.jpg", "artifact b.jpg", "complete J1"]  # a.jpg not sent twice
    assert server.completed[0]["metadata"]["artifacts"] == ["a.jpg", "b.jpg"]
    assert spool_files(again) == []


async def test_a_result_left_in_the_spool_is_sent_once_the_server_answers_again(
    server: FakeServer, tmp_path: Path
) -> None:
    runner = make_runner(tmp_path)
    entry = {
        "job_id": "LATE",
        "lease_token": "tok-LATE",
        "saved_at": time.time(),
        "deliver_until": time.time() - 1,  # its own delivery attempts gave up during the outage
        "markdown": "# waited out the outage",
        "metadata": {},
    }

    def spool_it(body: dict[str, Any]) -> None:
        if not (runner.config.spool / "LATE.json").exists() and not server.completed:
            runner.config.spool.mkdir(parents=True, exist_ok=True)
            (runner.config.spool / "LATE.json").write_text(json.dumps(entry))

    server.on_claim = spool_it  # the entry appears while the worker is already running
    await run_until(runner, lambda: server.completed)
    assert server.completed[0]["job_id"] == "LATE"
    assert not (runner.config.spool / "LATE.json").exists()


def _cpu_seconds(pid: int) -> float | None:
    from tests.unit.worker.test_slots import cpu_seconds

    return cpu_seconds(pid)


@pytest.mark.parametrize("reason", ["canceled", "lease lost", "shutdown"])
async def test_stopped_work_stops_using_cpu_within_2_s(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    """The job's processing (native-like: no progress reports) really ends, not only its bookkeeping."""
    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    server.add("J1", spin_s=120)
    runner = make_runner(tmp_path, grace_s=0.2)
    task = asyncio.ensure_future(runner.run(install_signals=False))
    deadline = time.monotonic() + 30
    while not (runner.jobs and "reading input" in runner.jobs["J1"].progress.message):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    slot = runner.jobs["J1"].slot
    pid = slot.pid  # type: ignore[attr-defined]
    before = _cpu_seconds(pid)
    await asyncio.sleep(1.0)
    during = _cpu_seconds(pid)
    # On a loaded machine the child gets a small share of a core; it only has to be running.
    assert before is not None and during is not None and during - before > 0.02, "the work burns CPU"
    start = time.monotonic()
    if reason == "canceled":
        server.heartbeat_answer = httpx.Response(
            200, json={"lease_expires_at": "2030-01-01T00:00:00Z", "canceled": True}
        )
    elif reason == "lease lost":
        server.heartbeat_answer = httpx.Response(409, json={"code": "stale_lease", "message": "gone"})
    else:
        runner.request_stop()
    while (cpu := _cpu_seconds(pid)) is not None:
        await asyncio.sleep(0.05)
        if time.monotonic() - start > 5:
            break
    stopped_after = time.monotonic() - start
    assert cpu is None and stopped_after < 2.0, f"the canceled work still ran after {stopped_after:.1f} s"
    if reason != "shutdown":
        await asyncio.sleep(0.3)
        assert runner.finished and runner.finished[0].outcome == reason and not runner.jobs
        runner.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert [f["error_class"] for f in server.failed] == (["shutdown"] if reason == "shutdown" else [])
    assert leftovers(runner) == []


async def test_a_segfaulting_processor_fails_its_job_and_the_worker_serves_the_next(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    server.add("J1", crash="segfault")
    server.add("J2", b"next one")
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: server.completed, timeout=30)
    (fail,) = server.failed
    assert fail["job_id"] == "J1" and fail["error_class"] == "internal" and fail["retryable"] is True
    assert "crashed (SIGSEGV)" in fail["error"]
    assert server.completed[0]["job_id"] == "J2" and "next one" in server.completed[0]["markdown"]
    assert leftovers(runner) == []


async def test_shutdown_keeps_the_client_open_until_results_are_delivered(
    server: FakeServer, tmp_path: Path
) -> None:
    """A stop that comes while a result is on its way waits for it before closing the client
    (the result's first send is slow and fails; its retry must not meet a closed client)."""
    server.complete_delays = {"LATE": 1.0}
    runner = make_runner(tmp_path)
    entry = {
        "job_id": "LATE",
        "lease_token": "tok-LATE",
        "saved_at": time.time(),
        "deliver_until": time.time() + 30,
        "markdown": "# sent in the background",
        "metadata": {},
    }

    def spool_it(body: dict[str, Any]) -> None:
        if len(server.claims) == 2:
            (runner.config.spool / "LATE.json").write_text(json.dumps(entry))

    late_calls: list[float] = []

    def late_is_slow_then_fails_once(request: httpx.Request) -> None:
        if json.loads(request.content)["job_id"] == "LATE" and not late_calls:
            late_calls.append(time.monotonic())
            raise httpx.ConnectError("slow, then down")  # after complete_delay_s: the retry comes late

    runner.config.spool.mkdir(parents=True)
    server.on_claim = spool_it
    server.on_complete = late_is_slow_then_fails_once
    await run_until(runner, lambda: "LATE" in server.complete_started)
    assert [c["job_id"] for c in server.completed] == ["LATE"]
    assert not list(runner.config.spool.glob("*.json"))


async def test_start_up_logs_the_types_offered_and_why_others_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from protocol.models import HelloResponse
    from worker.processors import video

    monkeypatch.setattr(video.shutil, "which", lambda name: None)
    runner = make_runner(tmp_path, content_types=None)
    hello = HelloResponse.model_validate(
        {
            "protocol_version": "1",
            "server_version": "t",
            "user": "u",
            "scope": "worker",
            "lanes": ["cpu"],
            "lease_s": 60,
            "max_claim_wait_s": 30,
        }
    )
    with caplog.at_level("INFO", logger="morag.worker"):
        await runner.setup(hello)
    await runner.client.aclose()
    assert "video" not in runner.content_types and "echo" in runner.content_types
    assert "not offering video: ffmpeg is not installed" in caplog.text


def slots_busy(runner: Runner) -> int:
    """Jobs holding a slot right now (prefetched jobs wait without one)."""
    return sum(1 for r in runner.jobs.values() if r.slot is not None and not r.slot_freed)


async def test_short_jobs_are_prefetched_without_running_more_than_the_slots(
    server: FakeServer, tmp_path: Path
) -> None:
    for i in range(16):
        server.add(f"J{i:02d}", sleep_s=0.05)
    # --prefetch -1: these jobs count as short even on a loaded machine, and the slots start
    # far more than 8 each within 5 s: 8 per slot ahead
    runner = make_runner(tmp_path, concurrency=2, prefetch_below_s=5.0)
    most: list[int] = []

    def done() -> bool:
        most.append(slots_busy(runner))
        return len(server.completed) == 16

    await run_until(runner, done)
    asked = [c["max_jobs"] for c in server.claims]
    assert asked[0] == 2  # nothing known about the jobs yet: the free slots only
    # Short jobs seen: up to 2 slots + 16 leased ahead (fewer when a claim goes while jobs still run).
    assert max(asked) >= 5 and all(a <= 18 for a in asked)
    assert max(most) <= 2  # never more jobs processing than --concurrency
    assert sorted(c["job_id"] for c in server.completed) == [f"J{i:02d}" for i in range(16)]
    assert not server.failed


@pytest.mark.parametrize(
    ("recent", "prefetch", "expected"),
    [
        ([0.001, 0.002], -1, 32),  # a few ms: 8 per slot ahead (the cap)
        ([0.02], -1, 20),  # 4 slots start 20 such jobs within 0.1 s
        ([0.04, 0.05], -1, 8),  # 4 slots start 8 such jobs within 0.1 s
        ([0.02, 0.09], -1, 4),  # the longest decides; never fewer than one per slot
        ([0.01, 0.1], -1, 0),  # one job at --prefetch-below: no prefetch at all
        ([0.01], 2, 2),  # --prefetch N: N ahead
        ([0.01], 0, 0),  # --prefetch 0: off
        ([], -1, 0),  # nothing known yet
    ],
)
def test_how_many_jobs_are_leased_ahead(
    tmp_path: Path, recent: list[float], prefetch: int, expected: int
) -> None:
    runner = make_runner(tmp_path, concurrency=4, prefetch=prefetch, prefetch_below_s=0.1)
    runner._recent.extend(recent)
    assert runner.prefetch() == expected


async def test_long_jobs_are_not_prefetched(server: FakeServer, tmp_path: Path) -> None:
    for i in range(4):
        server.add(f"J{i}", sleep_s=0.15)
    runner = make_runner(tmp_path, concurrency=2, prefetch_below_s=0.1)  # these jobs count as long
    await run_until(runner, lambda: len(server.completed) == 4)
    assert all(c["max_jobs"] <= 2 for c in server.claims)


async def test_prefetch_off(server: FakeServer, tmp_path: Path) -> None:
    for i in range(8):
        server.add(f"J{i}")
    runner = make_runner(tmp_path, concurrency=2, prefetch=0)
    await run_until(runner, lambda: len(server.completed) == 8)
    assert all(c["max_jobs"] <= 2 for c in server.claims)


async def test_a_prefetched_job_keeps_its_lease_while_it_waits_for_a_slot(
    server: FakeServer, tmp_path: Path
) -> None:
    server.add("J1")  # short: the next claim leases one ahead
    server.add("J2", sleep_s=1.2)  # holds the only slot for two lease lengths (lease 0.6 s)
    server.add("J3")  # leased with J2, waits for the slot
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0)
    await run_until(runner, lambda: len(server.completed) == 3)
    # J1; then J2 with J3 ahead (how many more: as the slot starts them within 5 s at J1's length)
    assert server.claims[0]["max_jobs"] == 1 and server.claims[1]["max_jobs"] >= 3
    j3_beats = [hb for hb in server.heartbeats if hb["job_id"] == "J3"]
    assert j3_beats, "the waiting job's lease was not extended"
    assert [c["job_id"] for c in server.completed] == ["J1", "J2", "J3"]


async def test_a_prefetched_job_stuck_behind_a_long_one_goes_back_to_the_queue(
    server: FakeServer, tmp_path: Path
) -> None:
    """J3 and J4, leased ahead with J2, would wait all of J2's 4.5 s for the only slot: after
    --prefetch-wait (here 2x --prefetch-below = 2 s) they go back to the queue (class shutdown: not
    an attempt), and the worker leases no more ahead while J2 runs, so it does not take them again
    at once. Breaks caught: no give-back; giving back without stopping the prefetch (J3 and J4
    leased again at once and given back again 2 s later)."""
    server.requeue_given_back = True
    server.add("J1")  # short: the next claim leases ahead
    server.add("J2", sleep_s=4.5)
    server.add("J3")
    server.add("J4")
    runner = make_runner(
        tmp_path, concurrency=1, prefetch=3, prefetch_below_s=1.0, prefetch_wait_s=0.3, pipeline=0
    )
    await run_until(runner, lambda: len(server.completed) == 4)
    assert [c["max_jobs"] for c in server.claims[:2]] == [1, 4]  # J1; then J2 with J3 and J4 ahead
    given_back = sorted(f["job_id"] for f in server.failed)
    assert given_back == ["J3", "J4"], server.failed  # each once
    assert all(f["error_class"] == "shutdown" and "back to the queue" in f["error"] for f in server.failed)
    assert [c["job_id"] for c in server.completed] == ["J1", "J2", "J3", "J4"]


async def test_shutdown_gives_back_a_job_waiting_in_a_busy_slots_child(
    server: FakeServer, tmp_path: Path
) -> None:
    """A job written to a slot's child behind the running one (--pipeline) has not begun: like a
    prefetched job it goes back at once, and the child never runs it."""
    server.add("J1")
    server.add("J2", sleep_s=0.8)
    server.add("J3")  # behind J2 in the same child
    runner = make_runner(
        tmp_path, concurrency=1, grace_s=5, prefetch_below_s=5.0, pipeline=2, pipeline_below_s=5.0
    )

    def j3_behind_j2() -> bool:
        run = runner.jobs.get("J3")
        return run is not None and run.slot is not None and run.slot.waiting("J3")

    await run_until(runner, j3_behind_j2)
    assert [c["job_id"] for c in server.completed] == ["J1", "J2"]  # J2 finished within grace
    assert [(f["job_id"], f["error_class"]) for f in server.failed] == [("J3", "shutdown")]
    assert leftovers(runner) == []


async def test_shutdown_gives_prefetched_jobs_back_at_once(server: FakeServer, tmp_path: Path) -> None:
    server.add("J1")
    server.add("J2", sleep_s=0.6)
    server.add("J3")  # prefetched behind J2
    runner = make_runner(tmp_path, concurrency=1, grace_s=5, prefetch_below_s=5.0)

    def j3_waiting() -> bool:
        return "J3" in runner.jobs and runner.jobs["J3"].slot is None and "J2" in runner.processing

    await run_until(runner, j3_waiting)
    assert [c["job_id"] for c in server.completed] == ["J1", "J2"]  # J2 finished within grace
    assert [(f["job_id"], f["error_class"]) for f in server.failed] == [("J3", "shutdown")]
    assert leftovers(runner) == []


async def test_a_result_waits_at_most_a_moment_for_a_claim_to_ride_on(
    server: FakeServer, tmp_path: Path
) -> None:
    server.features = ["claim-results"]
    server.add("J1")  # short: prefetch starts
    server.add("J2")  # finishes while J3 holds the slot and J4 waits: no claim is due yet
    server.add("J3", sleep_s=1.5)
    server.add("J4")
    server.add("J5")
    runner = make_runner(tmp_path, concurrency=1, prefetch=2, prefetch_below_s=5.0)
    j3_started: list[float] = []

    def done() -> bool:
        run = runner.jobs.get("J3")
        if run is not None and run.progress.phase == "processing" and not j3_started:
            j3_started.append(time.monotonic())
        return len(server.completed) == 5

    await run_until(runner, done)
    assert [c["max_jobs"] for c in server.claims[:2]] == [1, 3]  # J1; then J2-J4 (1 slot + 2 ahead)
    # J2's result rode on a claim that went after the 50 ms wait, long before J3 (1.5 s) ended.
    assert server.completed_at["J2"] - j3_started[0] < 0.5
    assert any(c.get("results") for c in server.claims)


async def test_a_standby_claims_job_takes_the_next_free_slot_ahead_of_the_prefetched_ones(
    server: FakeServer, tmp_path: Path
) -> None:
    """With its slot and prefetched places taken the worker keeps a standby claim open; the job
    it brings (another user's, in the server's order) runs next, not after the prefetched ones."""
    server.features = ["claim-results", "claim-standby"]
    server.add("J1")  # short: the next claim leases ahead
    server.add("J2", sleep_s=0.4)  # holds the one slot
    server.add("J3")
    server.add("J4")  # J3 and J4 prefetched: they wait for the slot
    server.add("B1", standby=True)
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0, pipeline=0)
    # The standby job arrives once J3 and J4 wait for the slot: it must overtake them.
    server.standby_ready = lambda: runner.pool is not None and len(runner.pool._waiters) == 2
    await run_until(runner, lambda: len(server.completed) == 5)
    assert [c["job_id"] for c in server.completed] == ["J1", "J2", "B1", "J3", "J4"]
    standby = [c for c in server.claims if c.get("standby")]
    assert standby and all(c["max_jobs"] == 1 and not c.get("results") for c in standby)
    assert all("standby" not in c for c in server.claims if not c.get("standby"))  # old servers refuse it
    assert not server.failed


async def test_no_standby_claim_without_the_servers_feature_or_with_it_off(
    server: FakeServer, tmp_path: Path
) -> None:
    for i in range(6):
        server.add(f"J{i}", sleep_s=0.1 if i == 1 else 0)
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0)
    await run_until(runner, lambda: len(server.completed) == 6)
    server.features = ["claim-standby"]
    for i in range(6):
        server.add(f"K{i}", sleep_s=0.1 if i == 1 else 0)
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0, standby=0)
    await run_until(runner, lambda: len(server.completed) == 12)
    assert not any("standby" in c for c in server.claims)


def busy_with_standby(server: FakeServer, j2_s: float, *standby: str) -> None:
    """J1 (short: the next claim leases ahead), J2 holding the one slot for ``j2_s``, J3
    prefetched behind it; ``standby``: jobs only a standby claim gets at first."""
    server.features = ["claim-standby"]
    server.add("J1")
    server.add("J2", sleep_s=j2_s)
    server.add("J3")
    for name in standby:
        server.add(name, standby=True)


async def test_shutdown_gives_back_what_a_standby_claim_in_flight_leased(
    server: FakeServer, tmp_path: Path
) -> None:
    busy_with_standby(server, 0.3, "S1")  # leased to the standby claim; its answer never arrives
    server.hold_standby = True
    runner = make_runner(tmp_path, concurrency=1, grace_s=5, prefetch_below_s=5.0)
    await run_until(runner, lambda: "S1" not in [j["job_id"] for j in server.standby_queue])
    sent = [c for c in server.claims if c.get("standby")]
    assert sent[-1]["retry"] and sent[-1]["wait_s"] == 0  # the cut-off claim, re-sent to fetch its jobs
    assert sent[-1]["claim_id"] == sent[0]["claim_id"]
    assert ("S1", "shutdown") in [(f["job_id"], f["error_class"]) for f in server.failed]


async def test_a_standby_claim_waits_until_its_last_job_holds_a_slot(
    server: FakeServer, tmp_path: Path
) -> None:
    """One standby job at a time: several would each jump ahead of the prefetched jobs (and of
    each other), and a busy worker would gather jobs that idle workers could run."""
    busy_with_standby(server, 0.5, "B1", "B2", "B3")  # all there at once
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0, pipeline=0)
    while_j2_runs: list[str] = []

    def on_claim(body: dict[str, Any]) -> None:
        j2 = runner.jobs.get("J2")
        if body.get("standby") and j2 is not None and j2.slot is not None and not j2.slot_freed:
            while_j2_runs.append(body["claim_id"])

    server.on_claim = on_claim
    await run_until(runner, lambda: len(server.completed) == 6)
    assert len(while_j2_runs) == 1  # B1's claim; the next waited for B1 to reach the slot
    order = [c["job_id"] for c in server.completed]
    assert order[:3] == ["J1", "J2", "B1"] and order.index("B2") < order.index("B3")


async def test_no_standby_claim_while_jobs_are_long(server: FakeServer, tmp_path: Path) -> None:
    """Long jobs are not prefetched, and no standby claim holds one back from other workers
    while this worker's slots are taken."""
    server.features = ["claim-standby"]
    for i in range(3):
        server.add(f"J{i}", sleep_s=0.15)  # long for --prefetch-below 0.1
    server.add("B1", standby=True)
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=0.1)
    await run_until(runner, lambda: len(server.completed) == 4)
    assert not any(c.get("standby") for c in server.claims)


async def test_a_standby_claim_that_fails_is_retried_and_the_worker_goes_on(
    server: FakeServer, tmp_path: Path
) -> None:
    busy_with_standby(server, 0.4, "B1")
    real = server._standby_claim
    calls: list[int] = []

    async def flaky(body: dict[str, Any]) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(200, content=b"{not json")  # a broken answer, not an outage
        return await real(body)

    server._standby_claim = flaky  # type: ignore[method-assign]
    runner = make_runner(tmp_path, concurrency=1, prefetch_below_s=5.0, pipeline=0)
    await run_until(runner, lambda: len(server.completed) == 4)
    assert len(calls) >= 2
    assert [c["job_id"] for c in server.completed][:3] == ["J1", "J2", "B1"]


async def test_freeze_heap_freezes_once_set_up_and_only_when_asked(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run(freeze_heap=True)`` calls gc.freeze once, after set-up and before the first claim; a
    runner in a test process (many runners) never freezes. Break caught: freezing unconditionally."""
    import gc

    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(server.claims)))
    server.add("J1")
    runner = make_runner(tmp_path)
    await run_until(runner, lambda: len(server.completed) == 1)
    assert frozen == []
    server.add("J2")
    runner = make_runner(tmp_path)
    claims_before = len(server.claims)
    task = asyncio.ensure_future(runner.run(install_signals=False, freeze_heap=True))
    deadline = time.monotonic() + 20
    while len(server.completed) < 2:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    runner.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert frozen == [claims_before]  # once, before the second runner's first claim
