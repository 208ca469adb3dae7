"""Webhooks: signed POST on the final state, retried with backoff (bounded), every attempt recorded,
delivered by the periodic sweep when no hook fired and after a restart."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from api import keystore, webhooks
from api.app import create_app
from api.ids import utcnow
from api.logging_setup import ContextFilter
from api.models import Job
from protocol.signing import sign_body
from tests.integration.api.conftest import Env, make_settings

# alice is the first user (id 1) of every test app; the server secret is "test-secret".
USER_SECRET = webhooks.user_secret(b"test-secret", 1).encode()


@pytest.fixture(autouse=True)
def _no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wait is the full backoff step here, so the tries' schedule below is exact."""
    monkeypatch.setattr(webhooks, "delivery_jitter", lambda job_id, attempt: 1.0)


class _Lines(logging.Handler):
    """Records of the ``morag`` loggers with the request/task ids the server's filter adds."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Lines:
        logger = logging.getLogger("morag")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("morag")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def task_of(self, text: str) -> set[str | None]:
        return {getattr(r, "task_id", None) for r in self.records if text in r.getMessage()}


class Receiver:
    """A tiny HTTP server on 127.0.0.1 answering from a script of status codes (then 200)."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []
        self.got = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status = self.script.pop(0) if self.script else 200
        self.calls.append({"headers": headers, "body": body, "status": status, "line": lines[0]})
        if status == 200:
            self.got.set()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def _verify(call: dict[str, Any], secret: bytes = USER_SECRET) -> dict[str, Any]:
    sig = dict(p.split("=", 1) for p in call["headers"]["x-morag-signature"].split(","))
    assert hmac.compare_digest(sig["v1"], sign_body(secret, call["body"], int(sig["t"])))
    # The server's own secret (download links, cookies) is not what signs webhooks.
    assert not hmac.compare_digest(sig["v1"], sign_body(b"test-secret", call["body"], int(sig["t"])))
    return dict(json.loads(call["body"]))


async def test_each_user_gets_a_webhook_secret_of_their_own(env: Env) -> None:
    alice = (await env.client.get("/api/v1/webhooks/secret", headers=env.alice)).json()
    bob = (await env.client.get("/api/v1/webhooks/secret", headers=env.bob)).json()
    assert alice["secret"].encode() == USER_SECRET and alice["header"] == "X-Morag-Signature"
    assert bob["secret"] != alice["secret"] and "test-secret" not in alice["secret"]
    resp = await env.client.get("/api/v1/webhooks/secret", headers=env.worker)
    assert resp.status_code == 403


async def _submit(env: Env, hook: str) -> str:
    resp = await env.client.post(
        "/api/v1/ingest/url",
        headers=env.alice,
        json={"url": "https://example.org/a", "webhook_url": hook, "document_id": "d1"},
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


async def test_signed_webhook_retried_until_delivered(env: Env) -> None:
    async with Receiver([500, 503]) as rx:
        task_id = await _submit(env, rx.url)
        await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
        await asyncio.wait_for(rx.got.wait(), 10)
    assert [c["status"] for c in rx.calls] == [500, 503, 200] and rx.calls[0]["line"].startswith("POST /hook")
    body = _verify(rx.calls[-1])
    job = asdict(await env.state.jobs.get_any(task_id))
    assert body == {
        "task_id": task_id,
        "status": "canceled",
        "result": None,
        "error": None,
        "error_class": None,
        "finished_at": job["finished_at"].isoformat(),
        "completed_at": job["finished_at"].isoformat(),  # deprecated name, kept one release
        "batch_id": None,
        "document_id": "d1",
    }
    await asyncio.sleep(0.5)  # the sweep must not send it again
    rows = await _rows_until(env.state, task_id, 3)
    assert [(r["attempt"], r["status_code"], r["delivered"]) for r in rows] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert len(rx.calls) == 3


async def test_sweep_delivers_when_no_hook_fired_with_result_summary(env: Env) -> None:
    async with Receiver([]) as rx:
        task_id = await _submit(env, rx.url)
        finished = utcnow()
        # As another process (the indexer) would: the job ends without this process' hook firing.
        async with env.state.engine.begin() as conn:
            await conn.execute(
                update(Job.__table__)
                .where(Job.__table__.c.id == task_id)
                .values(
                    state="succeeded",
                    stage="done",
                    finished_at=finished,
                    result={"markdown": "# abc", "metadata": {"title": "A"}, "chunks": 3},
                )
            )
        await asyncio.wait_for(rx.got.wait(), 10)
    body = _verify(rx.calls[0])
    assert body["status"] == "succeeded" and body["completed_at"] == finished.isoformat()
    assert body["result"] == {"content_length": 5, "metadata": {"title": "A"}, "chunks": 3}


@pytest.mark.parametrize(
    "settings_overrides",
    [{"webhook_retry_s": 1.0, "webhook_backoff_base_s": 0.2, "webhook_sweep_interval_s": 60}],
)
async def test_retries_are_bounded(env: Env) -> None:
    # Tries at ~0, 0.2 and 0.6 s; the next (1.4 s) is past the 1 s window: exactly 3.
    with _Lines() as lines:
        async with Receiver([500] * 100) as rx:
            task_id = await _submit(env, rx.url)
            await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
            rows = await _rows_until(env.state, task_id, 3)
            await asyncio.sleep(1.5)  # a 4th try would come 0.8 s after the 3rd
    assert lines.task_of("given up") == {task_id}  # the sender's lines name the task
    rows = [asdict(r) for r in await env.state.jobs.list_deliveries(task_id)]
    assert [r["attempt"] for r in rows] == [1, 2, 3] and not any(r["delivered"] for r in rows)
    assert len(rx.calls) == len(rows)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"webhook_retry_s": 2.0, "webhook_backoff_base_s": 0.2, "webhook_sweep_interval_s": 0.1}],
)
async def test_the_sweep_neither_restarts_a_given_up_delivery_nor_skips_the_backoff(env: Env) -> None:
    # Tries at ~0, 0.2, 0.6 and 1.4 s, then given up (the next, at 3.0 s, is past the 2 s window).
    # The sweep runs every 0.1 s and still sees the job as "ended recently, not delivered" until
    # 2 s: it must not start it again (it did, once per sweep, ignoring the backoff).
    async with Receiver([500] * 100) as rx:
        task_id = await _submit(env, rx.url)
        await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
        await _rows_until(env.state, task_id, 4)
        await asyncio.sleep(1.2)  # past the window: every sweep in it has run
        rows = [asdict(r) for r in await env.state.jobs.list_deliveries(task_id)]
    assert [r["attempt"] for r in rows] == [1, 2, 3, 4], rows
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(rows)]
    assert all(g >= 0.15 for g in gaps), gaps  # never sooner than the backoff
    assert len(rx.calls) == 4


async def test_unreachable_target_is_recorded(env: Env) -> None:
    async with Receiver([]) as rx:
        url = rx.url
    task_id = await _submit(env, url)  # nobody listens there any more
    await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
    await asyncio.sleep(0.5)
    rows = [asdict(r) for r in await env.state.jobs.list_deliveries(task_id)]
    assert rows and rows[0]["status_code"] is None and "Connect" in rows[0]["error"]


async def _rows_until(state: Any, task_id: str, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The delivery rows once there are ``n`` (the receiver answers before the row is written)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = [asdict(r) for r in await state.jobs.list_deliveries(task_id)]
        if len(rows) >= n or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_delivery_resumes_after_a_restart(tmp_path: Path) -> None:
    async with Receiver([500] * 3) as rx:
        app = create_app(make_settings(tmp_path, webhook_backoff_base_s=30))
        async with app.router.lifespan_context(app):
            engine = app.state.morag.engine
            await keystore.create_user(engine, "alice")
            key = (await keystore.create_key(engine, "alice", keystore.Scope.client))[1]
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                h = {"Authorization": f"Bearer {key}"}
                task_id = (
                    await c.post(
                        "/api/v1/ingest/url", headers=h, json={"url": "https://a.org", "webhook_url": rx.url}
                    )
                ).json()["task_id"]
                await c.delete(f"/api/v1/ingest/{task_id}", headers=h)
                # Stop only once the failed first try is recorded (not after a fixed time: under load
                # the try, or its row, may come late; a stop before the row would lose the attempt).
                first = await _rows_until(app.state.morag, task_id, 1)
                assert [(r["attempt"], r["status_code"]) for r in first] == [(1, 500)]
        assert len(rx.calls) == 1  # first try failed; the server stopped during the 30 s backoff
        rx.script = []
        app = create_app(make_settings(tmp_path))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(rx.got.wait(), 10)
            rows = await _rows_until(app.state.morag, task_id, 2)
    assert [(r["attempt"], r["delivered"]) for r in rows] == [(1, False), (2, True)]


async def test_webhook_after_processing_and_indexing(env: Env) -> None:
    from tests.integration.api.conftest import claim, complete

    with _Lines() as lines:
        async with Receiver([]) as rx:
            task_id = await _submit(env, rx.url)
            (job,) = await claim(env, ["web"])
            await complete(env, job, "# Title\n\nSome words worth indexing here.", {"title": "T"})
            await asyncio.wait_for(rx.got.wait(), 30)
    assert lines.task_of("indexed job") == {task_id}  # the indexing stage's lines name the task
    body = _verify(rx.calls[0])
    row = asdict(await env.state.jobs.get_any(task_id))
    assert len(rx.calls) == 1 and body["status"] == "succeeded" == row["state"]
    assert body["completed_at"] == row["finished_at"].isoformat()
    assert body["result"]["content_length"] == len("# Title\n\nSome words worth indexing here.")
    assert body["result"]["metadata"] == {"title": "T"} and body["error"] is None


@pytest.mark.parametrize("settings_overrides", [{"webhook_allow_private": False}])
async def test_target_resolving_to_loopback_at_delivery_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address check ON (every other test app turns it off): a webhook host that resolved to a
    public address at submission but resolves to 127.0.0.1 at delivery (DNS rebinding) gets nothing
    sent to it; the attempt is recorded as refused."""
    import socket

    real = socket.getaddrinfo
    lookups: list[str] = []

    def resolver(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host != "hooks.rebind.test":
            return real(host, port, *args, **kw)
        lookups.append(host)
        ip = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"  # public first, then loopback
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    async with Receiver([]) as rx:
        port = rx.url.split(":")[2].split("/")[0]
        hook = f"http://hooks.rebind.test:{port}/hook"
        body = {"url": "https://example.org/a", "webhook_url": hook}
        resp = await env.client.post("/api/v1/ingest/url", headers=env.alice, json=body)
        assert resp.status_code == 202, resp.text  # public at submission: accepted
        task_id = resp.json()["task_id"]
        await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
        rows = await _rows_until(env.state, task_id, 2)
        await asyncio.sleep(0.3)
        # Control: the same receiver by its loopback address is refused at submission already.
        body = {"url": "https://example.org/b", "webhook_url": rx.url}
        resp = await env.client.post("/api/v1/ingest/url", headers=env.alice, json=body)
    assert len(lookups) >= 2  # looked up again at delivery
    assert rx.calls == []  # nothing reached the loopback receiver
    assert rows and all(r["status_code"] is None and not r["delivered"] for r in rows)
    assert all("refused target" in r["error"] and "127.0.0.1" in r["error"] for r in rows), rows
    assert resp.status_code == 400 and resp.json()["code"] == "webhook_private_address", resp.text


@pytest.mark.parametrize("settings_overrides", [{"webhook_allow_private": False}])
async def test_rebinding_between_the_check_and_the_connection_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name passes every address check (submission, delivery) and resolves to 127.0.0.1 for
    the connection only: the sender's transport connects to the address it checked itself, so
    nothing reaches the loopback receiver (check and connection are one lookup)."""
    import socket
    import sys

    real = socket.getaddrinfo
    lookups: list[str] = []

    def in_address_check() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.endswith(("urlguard.py", "guards.py")):
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False

    def resolver(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != "hooks.rebind.test":
            return real(host, port, *args, **kw)
        ip = "93.184.216.34" if in_address_check() else "127.0.0.1"
        lookups.append(ip)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    async with Receiver([]) as rx:
        port = rx.url.split(":")[2].split("/")[0]
        body = {"url": "https://example.org/a", "webhook_url": f"http://hooks.rebind.test:{port}/hook"}
        resp = await env.client.post("/api/v1/ingest/url", headers=env.alice, json=body)
        assert resp.status_code == 202, resp.text  # public when checked at submission
        task_id = resp.json()["task_id"]
        await env.client.delete(f"/api/v1/ingest/{task_id}", headers=env.alice)
        rows = await _rows_until(env.state, task_id, 1)
        await asyncio.sleep(0.3)
    assert "127.0.0.1" in lookups  # the connection's lookup was the rebinding one
    assert rx.calls == []  # nothing reached the loopback receiver
    assert rows and all(r["status_code"] is None and not r["delivered"] for r in rows)
    assert all("refused target" in r["error"] and "127.0.0.1" in r["error"] for r in rows), rows
