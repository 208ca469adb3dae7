"""A running app (lifespan included) behind httpx's ASGI transport, with users, keys and checks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import func, select

from api import keystore
from api.app import create_app
from api.models import Job, StoredFile
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
OPENAPI = json.loads((ROOT / "openapi.json").read_text())


@dataclass
class Env:
    app: Any
    client: httpx.AsyncClient
    settings: Settings
    alice: dict[str, str]  # Authorization headers
    bob: dict[str, str]
    worker: dict[str, str]  # alice's worker key

    @property
    def state(self) -> Any:
        return self.app.state.morag

    async def snapshot(self) -> tuple[list[str], int, int]:
        """(files on disk, job rows, file rows): what bad input must leave unchanged."""
        folder = self.settings.data_dir / "files"
        names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        async with self.state.engine.begin() as conn:
            jobs = (await conn.execute(select(func.count()).select_from(Job.__table__))).scalar_one()
            files = (await conn.execute(select(func.count()).select_from(StoredFile.__table__))).scalar_one()
        return names, int(jobs), int(files)


def check_openapi(resp: httpx.Response, path: str, method: str | None = None) -> Any:
    """Validate the answer's body against the committed openapi.json for this path and status."""
    method = (method or resp.request.method).lower()
    op = OPENAPI["paths"][path][method]
    spec = op["responses"].get(str(resp.status_code))
    assert spec is not None, (
        f"{method.upper()} {path} documents no {resp.status_code} answer: {resp.text[:300]}"
    )
    content = spec.get("content", {}).get("application/json")
    body = resp.json()
    if content and content.get("schema"):
        schema = {**content["schema"], "components": OPENAPI["components"]}
        jsonschema.Draft202012Validator(schema).validate(body)
    return body


def check_error(resp: httpx.Response, path: str, status: int, code: str) -> dict[str, Any]:
    """An error answer: the status, the stable code, the documented shape."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert body["message"]
    if str(status) in OPENAPI["paths"][path][resp.request.method.lower()]["responses"]:
        check_openapi(resp, path)
    return dict(body)


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        secret_key="test-secret",
        claim_recheck_s=0.2,
        webhook_allow_private=True,
        webhook_backoff_base_s=0.05,
        webhook_sweep_interval_s=0.2,
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@asynccontextmanager
async def running_env(settings: Settings, raise_app_exceptions: bool = True) -> AsyncIterator[Env]:
    """The app with its lifespan, users alice and bob (client keys) and a worker key of alice's."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        engine = app.state.morag.engine
        keys = {}
        for user in ("alice", "bob"):
            await keystore.create_user(engine, user)
            keys[user] = (await keystore.create_key(engine, user, keystore.Scope.client))[1]
        worker_key = (await keystore.create_key(engine, "alice", keystore.Scope.worker))[1]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield Env(
                app=app,
                client=client,
                settings=settings,
                alice={"Authorization": f"Bearer {keys['alice']}"},
                bob={"Authorization": f"Bearer {keys['bob']}"},
                worker={"Authorization": f"Bearer {worker_key}"},
            )


@pytest.fixture
async def env(tmp_path: Path, settings_overrides: dict[str, Any]) -> AsyncIterator[Env]:
    async with running_env(make_settings(tmp_path, **settings_overrides)) as e:
        yield e


async def raw_post(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], query: bytes = b""
) -> list[dict[str, Any]]:
    """POST straight into the ASGI app, the body as ``chunks`` (one message each), then a client
    that has gone (``http.disconnect``); the messages the app sent back."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"host", b"testserver"), *headers],
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


async def claim(env: Env, content_types: list[str], wait_s: float = 5.0) -> list[dict[str, Any]]:
    """Claim like a worker of alice's (both lanes)."""
    resp = await env.client.post(
        "/worker/claim",
        headers=env.worker,
        json={
            "worker_id": "test-worker",
            "lanes": ["gpu", "cpu"],
            "content_types": content_types,
            "wait_s": wait_s,
        },
    )
    if resp.status_code == 204:
        return []
    assert resp.status_code == 200, resp.text
    return list(resp.json()["jobs"])


async def complete(
    env: Env, job: dict[str, Any], markdown: str, metadata: dict[str, Any] | None = None
) -> None:
    resp = await env.client.post(
        "/worker/complete",
        headers=env.worker,
        json={
            "job_id": job["job_id"],
            "lease_token": job["lease_token"],
            "markdown": markdown,
            "metadata": metadata or {},
        },
    )
    assert resp.status_code == 200, resp.text


def record_calls(obj: Any, name: str) -> list[float]:
    """Replace the coroutine method ``obj.<name>`` with one that notes the time of each call
    (``time.monotonic()``) and then runs it; returns that list."""
    calls: list[float] = []
    real = getattr(obj, name)

    async def recorded(*a: Any, **kw: Any) -> Any:
        calls.append(time.monotonic())
        return await real(*a, **kw)

    setattr(obj, name, recorded)
    return calls


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Wait until ``cond()`` is true, checking every 10 ms; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)
