"""Job-table throughput: enqueue, then claim + complete with N concurrent claimers, per backend.

    .venv/bin/python bench/queue_bench.py [--jobs 5000] [--workers 8] [--batch 10]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Goes through api.jobs.JobStore (the statements the HTTP routes run), on a fresh SQLite file and a
fresh PostgreSQL database. Prints one markdown row per backend and batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api import keystore
from api.db import dispose, make_engine, upgrade
from api.jobs import JobStore, Lease, NewJob
from api.keystore import Scope
from api.notifier import Notifier
from api.settings import Settings
from protocol.states import LaneKind


async def run(url: str, jobs: int, workers: int, batch: int) -> tuple[float, float]:
    await upgrade(url)
    engine = make_engine(url)
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=url, secret_key="bench")
    notifier = Notifier()
    store = JobStore(engine, settings, notifier)
    await keystore.create_user(engine, "bench")
    _, key = await keystore.create_key(engine, "bench", Scope.worker)
    who = await keystore.authenticate(engine, key)
    assert who is not None
    new = [NewJob(content_type="echo", lane_kind=LaneKind.cpu) for _ in range(jobs)]
    t0 = time.perf_counter()
    for i in range(0, jobs, 100):  # batches of 100 per transaction, as /ingest/batch does
        await store.enqueue_many(who, new[i : i + 100])
    enqueue_s = time.perf_counter() - t0
    done = 0

    async def claimer(n: int) -> None:
        nonlocal done
        while True:
            rows = await store.claim(who, f"w{n}", [LaneKind.cpu], ["echo"], batch, None)
            if not rows:
                return
            for r in rows:
                await store.complete(Lease(r.id, r.lease_token, who.key_id), "ok", {})
            done += len(rows)

    t0 = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(workers)))
    work_s = time.perf_counter() - t0
    assert done == jobs, done
    await dispose(engine)  # the held direct connections too
    return jobs / enqueue_s, jobs / work_s


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 10])
    p.add_argument("--postgres", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    args = p.parse_args()
    print("| backend | claimers | jobs per claim | enqueue jobs/s | claim+complete jobs/s |")
    print("|---|---|---|---|---|")
    import asyncpg

    admin = args.postgres.replace("+asyncpg", "")
    for batch in args.batch:
        for backend in ("sqlite", "postgresql"):
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
                db = None
            else:
                db = f"morag_bench_{uuid.uuid4().hex[:8]}"
                conn = await asyncpg.connect(admin)
                await conn.execute(f'CREATE DATABASE "{db}"')
                await conn.close()
                url = args.postgres.rsplit("/", 1)[0] + "/" + db
            try:
                enq, work = await run(url, args.jobs, args.workers, batch)
            finally:
                if db:
                    conn = await asyncpg.connect(admin)
                    await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                    await conn.close()
            print(f"| {backend} | {args.workers} | {batch} | {enq:,.0f} | {work:,.0f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
