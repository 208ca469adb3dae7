"""Several server processes started together on a FRESH PostgreSQL database.

Migrations run under an advisory lock (alembic/env.py), so every process comes up; a job submitted
to one process reaches a worker long-polling another through LISTEN/NOTIFY within 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest

from tests.conftest import PG_URL, _pg_admin
from tests.integration.conftest import FAST_ENV, LiveServer, free_port
from tests.integration.test_engine_http import assert_woken_within_100ms

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CLAIM = {"worker_id": "w1", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 10}


@pytest.fixture
def fresh_pg_url():
    name = f"morag_mp_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _latencies(claim_url: str, submit_url: str, worker_key: str, client_key: str) -> list[float]:
    wk = {"Authorization": f"Bearer {worker_key}"}
    ck = {"Authorization": f"Bearer {client_key}"}
    out = []
    async with httpx.AsyncClient(timeout=15) as http:
        for _ in range(8):
            claim = asyncio.create_task(http.post(f"{claim_url}/worker/claim", headers=wk, json=CLAIM))
            await asyncio.sleep(0.3)  # the claim is now waiting in the other process
            t0 = time.perf_counter()
            r = await http.post(
                f"{submit_url}/api/v1/ingest/url",
                headers=ck,
                json={"url": "https://example.com/x", "content_type": "echo"},
            )
            assert r.status_code == 202, r.text
            r = await claim
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out[1:]


def test_four_processes_start_together_on_a_fresh_database(tmp_path, fresh_pg_url):
    servers = []
    for i in range(4):
        data = tmp_path / f"s{i}"
        data.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
        env.update(FAST_ENV)
        env.update(
            {
                "MORAG_DATA_DIR": str(data),  # own Qdrant local path: one process per path
                "MORAG_DATABASE_URL": fresh_pg_url,
                "MORAG_SECRET_KEY": "shared-secret",
                "PYTHONUNBUFFERED": "1",
            }
        )
        servers.append(LiveServer(data_dir=data, port=free_port(), env=env))
    try:
        for s in servers:  # all at once, before anything migrated the empty database
            s.launch()
        for s in servers:
            s.wait_ready(90)
        for s in servers:
            assert httpx.get(f"{s.url}/health", timeout=5).json()["status"] == "ok"
        servers[0].cli("users", "create", "alice")
        worker_key = servers[0].create_key("alice", "worker")
        client_key = servers[0].create_key("alice", "client")
        latencies = asyncio.run(_latencies(servers[3].url, servers[1].url, worker_key, client_key))
        assert_woken_within_100ms(latencies)
        logs = "".join((s.data_dir / "server.log").read_text() for s in servers)
        assert "UniqueViolation" not in logs and "Traceback" not in logs, logs[-3000:]
    finally:
        for s in servers:
            s.stop()
