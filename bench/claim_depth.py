"""Claim time by queue depth, per claim shape (PostgreSQL): p50 of 50 claims at each depth.

    .venv/bin/python bench/claim_depth.py [--depths 10000,1000000] [--claims 50]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

Goes through api.jobs.JobStore.claim (the statement the HTTP route runs) on a fresh database per
depth, rows generated with generate_series. Shapes: a GPU-only worker (one lane), a worker of
both own lanes, a CPU worker whose claim adds its GPU lane's due fallback (none due: the GPU lane
is deep and its worker live), and a shared worker (one user's deep due queue, a deep default lane),
then again with one user's flood all that is queued: the other users who allow the shared fallback
have nothing queued (bench/fairness.py's case).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from api import keystore
from api.db import dispose, make_engine, upgrade
from api.jobs import JobStore
from api.keystore import Scope
from api.notifier import Notifier
from api.settings import Settings
from protocol.states import LaneKind

INSERT = (
    "INSERT INTO jobs (id, user_id, lane, content_type, kind, options, state, stage, priority, attempt, "
    "max_attempts, run_after, fallback_at, shared_at, created_at, progress, index_attempts) "
    "SELECT :prefix || lpad(g::text, 12, '0'), :uid, :lane, 'echo', 'process', '{}', 'queued', 'process', "
    "0, 0, 3, now() - interval '1 hour', {fallback}, {shared}, now(), 0, 0 FROM generate_series(1, :count) g"
)
DUE, LATER = "now() - interval '1 minute'", "now() + interval '1 hour'"
STAGGERED = "now() - interval '1 hour' + g * interval '1 ms'"  # due, one after another


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(base_url: str, depth: int, claims: int) -> dict[str, float]:
    name = f"morag_depth_{uuid.uuid4().hex[:8]}"
    await _admin(base_url, f'CREATE DATABASE "{name}"')
    url = base_url.rsplit("/", 1)[0] + "/" + name
    try:
        await upgrade(url)
        engine = make_engine(url)
        settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=url, secret_key="bench")
        store = JobStore(engine, settings, Notifier())
        who = {}
        users = (("alice", Scope.worker), ("big", Scope.worker), ("operator", Scope.shared_worker))
        for user, scope in users:
            await keystore.create_user(engine, user)
            key = (await keystore.create_key(engine, user, scope))[1]
            who[user] = await keystore.authenticate(engine, key)
        a, b = who["alice"].user_id, who["big"].user_id
        part = depth // 4
        rows = [  # (prefix, user, lane, count, fallback_at, shared_at)
            ("a", a, f"gpu-tasks-{a}", part, LATER, LATER),
            ("b", a, f"cpu-tasks-{a}", part, "NULL", LATER),
            ("c", b, f"cpu-tasks-{b}", part, "NULL", DUE),
            ("d", None, "default", part, "NULL", "NULL"),
        ]
        async with engine.begin() as conn:
            for prefix, uid, lane, count, fb, sh in rows:
                sql = INSERT.replace("{fallback}", fb).replace("{shared}", sh)
                await conn.execute(text(sql), {"prefix": prefix, "uid": uid, "lane": lane, "count": count})
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE jobs"))
        shapes = {
            "own GPU lane": (who["alice"], [LaneKind.gpu]),
            "own GPU+CPU lanes": (who["alice"], [LaneKind.gpu, LaneKind.cpu]),
            "CPU lane + GPU fallback": (who["alice"], [LaneKind.cpu]),
            "shared (fair per user)": (who["operator"], [LaneKind.default]),
        }
        out = {}

        async def measure(label: str, principal: Any, lanes: list[LaneKind], n: int = 1) -> None:
            times = []
            for i in range(claims):
                t0 = time.perf_counter()
                got = await store.claim(principal, f"w{i}", lanes, ["echo"], n, None)
                times.append((time.perf_counter() - t0) * 1000)
                assert got, label
            out[label] = statistics.median(times)

        for label, (principal, lanes) in shapes.items():
            await measure(label, principal, lanes)
        # One user's flood is all that is queued (bench/fairness.py's case): the other users who
        # allow the shared fallback have nothing queued, and each still costs one probe.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("DELETE FROM jobs WHERE user_id IS DISTINCT FROM :b"), {"b": b})
            await conn.execute(
                # each due a moment apart, as jobs submitted one after another are
                text(INSERT.replace("{fallback}", "NULL").replace("{shared}", STAGGERED)),
                {"prefix": "e", "uid": b, "lane": f"cpu-tasks-{b}", "count": depth - part},
            )
            await conn.execute(text("VACUUM ANALYZE jobs"))
        await measure("shared, one user's flood, claims of 8", who["operator"], [LaneKind.default], 8)
        await dispose(engine)  # the held direct connections too
        return out
    finally:
        await _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depths", default="10000,1000000")
    p.add_argument("--claims", type=int, default=50)
    p.add_argument("--postgres", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    args = p.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    results = {d: await run(args.postgres, d, args.claims) for d in depths}
    print("| claim shape | " + " | ".join(f"p50 ms at {d:,} queued" for d in depths) + " | ratio |")
    print("|---|" + "---|" * (len(depths) + 1))
    for label in results[depths[0]]:
        cells = [f"{results[d][label]:.2f}" for d in depths]
        ratio = results[depths[-1]][label] / results[depths[0]][label]
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
