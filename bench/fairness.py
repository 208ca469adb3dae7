"""Fairness of the shared lane over HTTP: does one user's flood delay another user's few jobs?

    .venv/bin/python bench/fairness.py [--flood 5000] [--few 20] [--rounds 3] [--job-s 0] [--sqlite]
        [--no-analyze]

Per round, on a fresh PostgreSQL database (or SQLite file) and a fresh ``python -m api serve``
(loopback, per-key rate limits lifted, ``MORAG_SHARED_FALLBACK_AFTER_S=0`` so that the jobs of users
without a worker of their own go to the shared lane at once), with 2 real shared workers
(``python -m worker`` with an operator's ``shared-worker`` key, ``--concurrency 4``, ``echo`` jobs):

- *with the flood*: the workers are paused (SIGSTOP) while user A queues ``--flood`` jobs; they are
  resumed, and once they are draining A's backlog user B submits ``--few`` jobs, one every
  ``--gap-s`` seconds;
  ``--job-s`` makes each of A's jobs take about that long (echo's ``sleep_s``, 0.5-1.5x, seeded),
  as a transcription would: the workers' slots then free one at a time, each claim asks for one
  job, and B's job can at best take the next slot that frees;
  once A's flood is queued, ``ANALYZE jobs`` gives the planner the statistics a server that has run
  a while has (``--no-analyze``: those of the fresh database, until autovacuum's own ANALYZE lands);
- *alone*: the same B jobs, same gaps, to the same idle workers.

``--worker-nice N`` starts the workers under ``nice -n N``: a probe of what is left once the
workers' CPU no longer competes with the server's (users run workers on machines of their own).

B's wait per job is the server's own record, ``started_at - created_at`` (claimed minus
submitted, one clock). The two modes alternate, and each round reports B's p50 / p99 / max wait
in both; the target (issue [throughput]) is B's p99 with the flood <= 2x B's p99 alone.
Every process it starts is stopped, and its database dropped, before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from idle_polls import PG, _cli, _free_port

WORKERS, SLOTS = 2, 4


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one(a: argparse.Namespace, flood: bool) -> tuple[list[float], float | None]:
    """B's waits in ms, and with the flood A's drain rate (jobs/s, resumed -> A's last job ended)."""
    code = Path(__file__).resolve().parent.parent
    data = Path(tempfile.mkdtemp(prefix="morag-fair-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
    env.update(
        MORAG_DATA_DIR=str(data),
        MORAG_SECRET_KEY="bench",
        MORAG_LOG_LEVEL="warning",
        MORAG_SHARED_FALLBACK_AFTER_S="0",
        PYTHONPATH=str(code),
    )
    env.update(
        {f"MORAG_RATE_{k}": "1000000" for k in ("SUBMIT_PER_S", "SUBMIT_BURST", "CLAIM_PER_S", "CLAIM_BURST")}
    )
    dbname = f"morag_fair_{uuid.uuid4().hex[:8]}"
    admin = None
    if not a.sqlite:
        admin = await asyncpg.connect(f"{PG}/test")
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        env["MORAG_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        keys = {}
        for user in ("alice", "bob", "warmup"):
            _cli(code, env, "users", "create", user)
            keys[user] = _cli(code, env, "keys", "create", "--user", user, "--scope", "client")
        _cli(code, env, "users", "create", "operator")
        shared = _cli(code, env, "keys", "create", "--user", "operator", "--scope", "shared-worker")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=code,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=open(data / "server.log", "wb"),
            )
        )
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for _ in range(600):
                try:
                    if (await c.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            wenv = {k: v for k, v in env.items() if not k.startswith("MORAG_")}
            wenv |= {k: v for k, v in os.environ.items() if k.startswith("MORAG_WORKER_")}  # A/B runs
            logs = []
            for i in range(WORKERS):
                logs.append(data / f"worker{i}.log")
                argv = ["nice", "-n", str(a.worker_nice)] if a.worker_nice else []
                argv += [sys.executable, "-m", "worker", "--api-key", shared, "--server", url]
                argv += ["--name", f"shared-{i}", "--content-types", "echo", "--concurrency", str(SLOTS)]
                argv += ["--temp-dir", str(data / f"w{i}")]
                procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=code,
                        env=wenv,
                        start_new_session=True,
                        stdout=subprocess.DEVNULL,
                        stderr=open(logs[-1], "wb"),
                    )
                )
            deadline = time.monotonic() + 60
            while not all("serving lanes" in p.read_text() for p in logs):
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not start: " + logs[0].read_text()[-2000:])
                await asyncio.sleep(0.1)

            async def submit(user: str, seq: int) -> str:
                r = await c.post(
                    "/process/url",
                    params={"wait_s": 0},
                    headers={"Authorization": f"Bearer {keys[user]}"},
                    json={
                        "url": f"https://bench.invalid/{user}/{seq}",
                        "content_type": "echo",
                        "options": {"sleep_s": round(a.job_s * jitter.uniform(0.5, 1.5), 3)}
                        if user == "alice"
                        else {},
                    },
                )
                if r.status_code != 202:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
                return str(r.json()["task_id"])

            jitter = random.Random(15)  # A's job lengths vary, so slots free apart; the same every run
            # Warm the workers up (each slot's child process starts with its first job) before timing.
            warm = [await submit("warmup", i) for i in range(WORKERS * SLOTS * 2)]
            wh = {"Authorization": f"Bearer {keys['warmup']}"}
            for tid in warm:
                while (await c.get(f"/api/v1/status/{tid}", headers=wh)).json()["status"] != "succeeded":
                    if time.monotonic() > deadline + 60:
                        raise RuntimeError("warm-up jobs did not finish")
                    await asyncio.sleep(0.1)
            if flood:
                for p in procs[1:]:
                    os.killpg(p.pid, signal.SIGSTOP)
                sem = asyncio.Semaphore(8)

                async def flood_one(seq: int) -> str:
                    async with sem:
                        return await submit("alice", seq)

                last_a = (await asyncio.gather(*(flood_one(i) for i in range(a.flood))))[-1]
                if a.analyze and not a.sqlite:  # the statistics of a server that has run a while
                    stats = await asyncpg.connect(f"{PG}/{dbname}")
                    try:
                        await stats.execute("ANALYZE jobs")
                    finally:
                        await stats.close()
                for p in procs[1:]:
                    os.killpg(p.pid, signal.SIGCONT)
                resumed = datetime.now(UTC)
                await asyncio.sleep(0.5)  # the workers are draining A's backlog
            few = []
            for i in range(a.few):
                few.append(await submit("bob", i))
                await asyncio.sleep(a.gap_s)
            waits: dict[str, float] = {}
            b_last = datetime.min.replace(tzinfo=UTC)
            deadline = time.monotonic() + 300
            bob = {"Authorization": f"Bearer {keys['bob']}"}
            while len(waits) < len(few) and time.monotonic() < deadline:
                for tid in few:
                    if tid in waits:
                        continue
                    st = (await c.get(f"/api/v1/status/{tid}", headers=bob)).json()
                    if st.get("started_at"):
                        started = datetime.fromisoformat(st["started_at"])
                        created = datetime.fromisoformat(st["created_at"])
                        waits[tid] = (started - created).total_seconds() * 1000
                        b_last = max(b_last, started)
                await asyncio.sleep(0.2)
            if len(waits) < len(few):
                raise RuntimeError(f"only {len(waits)}/{len(few)} of B's jobs were claimed within 300 s")
            if flood:  # was A's backlog still there when B's last job was claimed?
                st = (
                    await c.get(
                        f"/api/v1/status/{last_a}", headers={"Authorization": f"Bearer {keys['alice']}"}
                    )
                ).json()
                if st.get("started_at") and datetime.fromisoformat(st["started_at"]) < b_last:
                    print("  (A's backlog ran out before B's last job: raise --flood)", flush=True)
                while not st.get("finished_at") and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    st = (
                        await c.get(
                            f"/api/v1/status/{last_a}", headers={"Authorization": f"Bearer {keys['alice']}"}
                        )
                    ).json()
                if st.get("finished_at"):
                    took_s = (datetime.fromisoformat(st["finished_at"]) - resumed).total_seconds()
                    return [waits[t] for t in few], a.flood / took_s
            return [waits[t] for t in few], None
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
        if admin is not None and os.environ.get("BENCH_KEEP_DB"):
            print(f"  kept database {dbname}", flush=True)
        elif admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await admin.close()


async def main(a: argparse.Namespace) -> None:
    rows = {True: [], False: []}  # type: dict[bool, list[float]]
    drains: list[float] = []
    for r in range(a.rounds):
        for flood in (r % 2 == 0, r % 2 != 0):
            w, drain = await one(a, flood)
            rows[flood] += w
            if drain:
                drains.append(drain)
            label = f"A's {a.flood:,} queued" if flood else "alone"
            print(
                f"round {r + 1}, B {label}: p50 {statistics.median(w):.0f} ms, p99 {pct(w, 0.99):.0f} ms, "
                f"max {max(w):.0f} ms",
                flush=True,
            )
    backend = "SQLite" if a.sqlite else "PostgreSQL"
    took = f", A's jobs {a.job_s} s each" if a.job_s else ""
    print(f"\n{backend}, B's {a.few} jobs {a.gap_s} s apart{took}, {a.rounds} round(s) pooled:")
    print("| B's wait (submit -> claimed), ms | p50 | p99 | max |")
    print("|---|---|---|---|")
    for flood in (False, True):
        w = rows[flood]
        label = f"with A's {a.flood:,} jobs queued" if flood else "alone"
        print(f"| {label} | {statistics.median(w):.0f} | {pct(w, 0.99):.0f} | {max(w):.0f} |")
    ratio = pct(rows[True], 0.99) / max(pct(rows[False], 0.99), 0.001)
    print(f"p99 with the flood vs alone: {ratio:.2f}x (target <= 2x)")
    if drains:
        rate = statistics.median(drains)
        print(f"A's backlog drained at {rate:,.0f} jobs/s (median of {len(drains)} rounds)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flood", type=int, default=5000)
    p.add_argument("--few", type=int, default=20)
    p.add_argument("--gap-s", type=float, default=0.1)
    p.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="run the workers at this nice level: a probe of workers on machines of their own, "
        "as users run them (here they share the server's 2 cores)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--job-s", type=float, default=0.0, help="how long each of A's jobs takes (echo sleep_s)")
    p.add_argument("--sqlite", action="store_true")
    p.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE the jobs table once A's flood is queued (PostgreSQL), as autovacuum does on a "
        "server that has run a while; --no-analyze: the fresh database's statistics, until "
        "autovacuum's own ANALYZE lands at some point of the round",
    )
    asyncio.run(main(p.parse_args()))
