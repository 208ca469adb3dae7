"""``python -m api serve`` as an operator runs it: several processes, one /metrics, logs configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ROOT, free_port
from tests.integration.test_multiprocess import fresh_pg_url  # noqa: F401  (fixture)

COUNT_IN_PROCESS = """
import os, sys
from api import metrics
metrics.REQUESTS.labels("GET", "/probe", "200").inc(int(sys.argv[1]))
metrics.UPLOAD_BYTES.labels("/api/v1/ingest/file").inc(1000)
"""
RENDER = """
import asyncio, sys
from api import db, metrics
from api.jobs import JobStore
from api.notifier import Notifier
from api.settings import Settings
url = sys.argv[1]
db.upgrade_sync(url)
engine = db.make_engine(url)
jobs = JobStore(engine, Settings(database_url=url, secret_key="s"), Notifier())
print(asyncio.run(metrics.render(jobs)).decode())
"""


def test_metrics_of_several_processes_add_up(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    for n in ("3", "4"):  # two processes that each counted, then exited
        subprocess.run([sys.executable, "-c", COUNT_IN_PROCESS, n], env=env, cwd=ROOT, check=True, timeout=60)
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    out = subprocess.run(
        [sys.executable, "-c", RENDER, url],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert 'morag_http_requests_total{method="GET",route="/probe",status="200"} 7.0' in out
    assert 'morag_upload_bytes_total{route="/api/v1/ingest/file"} 2000.0' in out
    assert "# TYPE morag_jobs gauge" in out


@pytest.mark.postgres
@pytest.mark.slow
def test_serve_with_two_workers_logs_json_with_request_ids_and_no_secrets(
    tmp_path: Path,
    fresh_pg_url: str,  # noqa: F811
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORAG_", "PROMETHEUS_"))}
    env.update(
        {
            "MORAG_DATA_DIR": str(tmp_path / "data"),
            "MORAG_DATABASE_URL": fresh_pg_url,
            "MORAG_SECRET_KEY": "s",
            "MORAG_LOG_JSON": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for _ in range(30):  # a new connection each: both processes get some
            r = httpx.get(
                f"{base}/health?sig=SIGSECRET",
                headers={"Authorization": "Bearer mrg_KEYSECRET", "X-Request-ID": "op-check-1"},
                timeout=5,
            )
            assert r.status_code == 200 and r.headers["x-request-id"] == "op-check-1"
        for _ in range(3):  # whichever process answers, it counts all 30
            m = httpx.get(f"{base}/metrics", timeout=10)
            assert m.status_code == 200
            line = next(
                x
                for x in m.text.splitlines()
                if x.startswith('morag_http_requests_total{method="GET",route="/health"')
            )
            assert float(line.split()[-1]) >= 30
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    text = log_path.read_text()
    assert "SIGSECRET" not in text and "KEYSECRET" not in text
    records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert any(r["logger"].startswith("uvicorn") for r in records), text[-2000:]  # uvicorn's lines too
    mine = "/health?sig=[redacted]"
    access = [r for r in records if r["logger"] == "morag.access" and mine in r["message"]]
    assert len(access) >= 30 and all(r.get("request_id") == "op-check-1" for r in access)
    assert len({r["ts"][:4] for r in records}) == 1  # every line has a timestamp
    assert len({line for line in text.splitlines() if not line.startswith("{")} - {""}) == 0, text[-2000:]
