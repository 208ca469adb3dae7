"""A real server process for end-to-end tests: ``live_server(env)`` starts ``python -m api serve``.

The factory gives each server a free port on 127.0.0.1 and its own data directory (SQLite), creates
a user ``alice`` with a worker and a client key through the CLI, and stops every server it started
when the test ends. ``LiveServer.kill()`` + ``start()`` cut the server and bring it back on the same
port and data directory (what an outage looks like to a worker).

A test (or module, via ``pytest.mark.usefixtures("database_url")``) that uses the ``database_url``
fixture runs its servers on that database: once on SQLite and once on a fresh PostgreSQL copy of
the migrated template. ``live_server(database_url=...)`` points one server at a given database
(two servers on one PostgreSQL database share the queue).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST_ENV = {
    "MORAG_LEASE_S": "3",
    "MORAG_REAPER_INTERVAL_S": "0.2",
    "MORAG_RETRY_BASE_S": "0.1",
    "MORAG_CLAIM_RECHECK_S": "0.2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """One ``python -m api serve`` subprocess and the keys made for it."""

    data_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    keys: dict[str, str] = field(default_factory=dict)  # "worker", "client", ...

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_key(self) -> str:
        return self.keys["worker"]

    @property
    def client_key(self) -> str:
        return self.keys["client"]

    def cli(self, *args: str) -> str:
        """Run ``python -m api ARGS`` on this server's data; its stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "api", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create_key(self, user: str, scope: str) -> str:
        return self.cli("keys", "create", "--user", user, "--scope", scope).strip().splitlines()[-1]

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) the server and wait until /health answers."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it."""
        log = (self.data_dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until /health answers; fail with the server's log if it exited."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not answer /health in time")

    def start_worker(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """A real ``python -m worker`` process with this server's worker key; output to ``log``."""
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", "--api-key", self.worker_key, "--server", self.url, *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """Cut the server at once (SIGKILL), like a crash or a lost network."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_final(self, task_id: str, timeout: float = 180) -> dict[str, Any]:
        """The task's status once it is final (fails the test after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.api("GET", f"/status/{task_id}").json()
            if body["status"] in {"succeeded", "failed", "dead", "canceled"}:
                return body
            time.sleep(0.2)
        raise AssertionError(f"task {task_id} not final after {timeout} s: {body}")

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A client-key request to /api/v1."""
        headers = {"Authorization": f"Bearer {self.client_key}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=10, **kw)


LiveServerFactory = Callable[..., LiveServer]


@pytest.fixture
def live_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveServerFactory]:
    """Factory: ``live_server(env={...}, scopes=("worker", "client"))`` -> a started LiveServer."""
    started: list[LiveServer] = []
    default_db = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else None

    def factory(
        env: dict[str, str] | None = None,
        scopes: tuple[str, ...] = ("worker", "client"),
        user: str = "alice",
        database_url: str | None = None,
    ) -> LiveServer:
        data = tmp_path_factory.mktemp("server")
        full = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
        full.update(FAST_ENV)
        full.update({"MORAG_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"})
        if database_url or default_db:
            full["MORAG_DATABASE_URL"] = str(database_url or default_db)
        full.update(env or {})
        server = LiveServer(data_dir=data, port=free_port(), env=full)
        if not (database_url and any(s.env.get("MORAG_DATABASE_URL") == database_url for s in started)):
            server.cli("users", "create", user)  # migrates the database before the server opens it
        started.append(server)
        server.launch()  # boots while the keys are made (each CLI call is a process of its own)
        for scope in scopes:
            server.keys[scope] = server.create_key(user, scope)
        server.wait_ready()
        return server

    yield factory
    for server in started:
        server.stop()
