"""Client side of a peer queue, run in bench/.peers-venv by bench/e2e_bench.py.

    python driver.py celery|pgqueuer|procrastinate

Reads one JSON command a line on stdin, answers one JSON line on stdout:
  {"op": "submit", "seq": 7}          -> {"t0": ..., "t1": ...}   one job, wall clock around the call
  {"op": "enqueue", "start": 0, "n": 1000} -> {"t0": ..., "t1": ...}  n jobs, one call each
  {"op": "pending"}                   -> {"pending": n}  jobs the queue has not finished (one query)
  {"op": "quit"}
Connections are opened once, as an application would keep them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


class Celery:
    def __init__(self) -> None:
        import redis
        from celery_app import app, echo

        self.app, self.echo = app, echo
        self.queue = os.environ["BENCH_QUEUE"]
        self.redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    async def submit(self, seq: int) -> None:
        self.echo.apply_async(args=[seq])

    async def pending(self) -> int:
        return int(self.redis.llen(self.queue)) + int(self.redis.hlen("unacked"))

    async def close(self) -> None:
        q = self.queue
        self.redis.delete(q, f"_kombu.binding.{q}", f"_kombu.binding_permanent.{q}")
        self.redis.close()


class PgQueuer:
    async def open(self) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = await asyncpg.connect(os.environ["BENCH_PG_DSN"])
        self.queries = Queries(AsyncpgDriver(self.conn))

    async def submit(self, seq: int) -> None:
        await self.queries.enqueue("echo", str(seq).encode())

    async def pending(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def close(self) -> None:
        await self.conn.close()


class Procrastinate:
    async def open(self) -> None:
        from proc_app import app, echo

        self.app, self.echo = app, echo
        await app.open_async()

    async def submit(self, seq: int) -> None:
        await self.echo.defer_async(seq=seq)

    async def pending(self) -> int:
        rows = await self.app.connector.execute_query_all_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )
        return int(rows[0]["n"])

    async def close(self) -> None:
        await self.app.close_async()


async def main(system: str) -> None:
    peer: Any = {"celery": Celery, "pgqueuer": PgQueuer, "procrastinate": Procrastinate}[system]()
    if hasattr(peer, "open"):
        await peer.open()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        out: dict[str, Any] = {}
        if cmd["op"] == "submit":
            t0 = time.time()
            await peer.submit(cmd["seq"])
            out = {"t0": t0, "t1": time.time()}
        elif cmd["op"] == "enqueue":
            t0 = time.time()
            for seq in range(cmd["start"], cmd["start"] + cmd["n"]):
                await peer.submit(seq)
            out = {"t0": t0, "t1": time.time()}
        elif cmd["op"] == "pending":
            out = {"pending": await peer.pending()}
        elif cmd["op"] == "quit":
            break
        print(json.dumps(out), flush=True)
    await peer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
