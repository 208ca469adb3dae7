"""PgQueuer peer: ``pgq run pgq_app:create`` with a no-op entrypoint that marks start and end."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from marks import mark
from pgqueuer import AsyncpgDriver, Job, PgQueuer


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(os.environ["BENCH_PG_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("echo")
    async def echo(job: Job) -> None:
        seq = (job.payload or b"").decode()
        mark("start", seq)
        mark("end", seq)

    try:
        yield pgq
    finally:
        await conn.close()


if __name__ == "__main__":
    # `pgq run pgq_app:create --max-concurrent-tasks 4` does the same; pgqueuer 1.6's CLI fails
    # at start-up ("'str' object has no attribute 'name'" in its logger set-up), so call run().
    import asyncio
    import sys

    from pgqueuer import run

    # pgqueuer wants max_concurrent_tasks >= 2 x batch_size: 4 slots take batches of 2.
    slots = int(sys.argv[1])
    asyncio.run(run(create, max_concurrent_tasks=slots, batch_size=max(1, slots // 2)))
