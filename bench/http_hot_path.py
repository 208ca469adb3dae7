"""claim + complete over HTTP (in-process ASGI app, PostgreSQL): jobs/s and commits per job.

    PYTHONPATH=. .venv/bin/python bench/http_hot_path.py [JOBS] [BATCH]

JOBS queued echo jobs of one user are claimed and completed one at a time over HTTP (BATCH=0),
or BATCH per claim and completed with one /worker/complete-batch. Commits are read from
pg_stat_database (they include the server's background loops over the run).
"""

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from api import keystore
from api.app import create_app
from api.keystore import Scope
from api.settings import Settings

BASE = "postgresql://postgres@127.0.0.1:5432/test"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
B = int(sys.argv[2]) if len(sys.argv) > 2 else 0


async def main():
    name = f"morag_hot_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(BASE)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), database_url=url, secret_key="x"))
        async with app.router.lifespan_context(app):
            engine = app.state.morag.engine
            await keystore.create_user(engine, "alice")
            wk = (await keystore.create_key(engine, "alice", Scope.worker))[1]
            uid = await keystore.get_user_id(engine, "alice")
            db = await asyncpg.connect(BASE.rsplit("/", 1)[0] + "/" + name)
            await db.execute(
                "INSERT INTO jobs (id, user_id, lane, content_type, kind, options, state, stage, priority,"
                " attempt, max_attempts, run_after, fallback_at, shared_at, created_at, progress,"
                " index_attempts)"
                f" SELECT lpad(g::text, 12, '0'), {uid}, 'cpu-tasks-{uid}', 'echo', 'process', '{{}}',"
                " 'queued', 'process', 0, 0, 3, now() - interval '1 hour', NULL,"
                " now() + interval '1 hour', now(), 0, 0"
                f" FROM generate_series(1, {N}) g"
            )
            h = {"Authorization": f"Bearer {wk}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                body = {
                    "worker_id": "w",
                    "lanes": ["cpu"],
                    "content_types": ["echo"],
                    "wait_s": 0,
                    "max_jobs": 1,
                }
                if B:
                    body["max_jobs"] = B
                r = await c.post("/worker/claim", headers=h, json=body)  # warm up (presence row, caches)
                for j in r.json()["jobs"]:
                    await c.post(
                        "/worker/complete",
                        headers=h,
                        json={"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"},
                    )
                await asyncio.sleep(1.2)
                x0 = await db.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
                t0 = time.perf_counter()
                done = 0
                while True:
                    r = await c.post("/worker/claim", headers=h, json=body)
                    if r.status_code == 204:
                        break
                    if B:
                        res = [
                            {"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"}
                            for j in r.json()["jobs"]
                        ]
                        rr = await c.post("/worker/complete-batch", headers=h, json={"results": res})
                        assert rr.status_code == 200, rr.text
                        done += len(res)
                        continue
                    for j in r.json()["jobs"]:
                        rr = await c.post(
                            "/worker/complete",
                            headers=h,
                            json={"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"},
                        )
                        assert rr.status_code == 200, rr.text
                        done += 1
                dt = time.perf_counter() - t0
                await asyncio.sleep(1.2)
                x1 = await db.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
                await db.close()
        print(
            f"{done} jobs in {dt:.2f} s: {done / dt:.0f} jobs/s, "
            f"{(x1 - x0) / done:.2f} commits/job (incl. background loops)"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


asyncio.run(main())
