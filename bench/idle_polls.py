"""Idle long-polls against the real server: what N waiting workers cost, and how fast a job meets one.

    .venv/bin/python bench/idle_polls.py --backend postgres --polls 1000 [--code DIR] [--measure-s 20]

Starts ``python -m api serve`` (from ``--code``, default this checkout) on a fresh PostgreSQL
database (or a fresh SQLite file), makes ``--users`` users with one worker key and one client key
each, and opens ``--polls`` long-polling claims (``wait_s`` 30, spread over the worker keys; each
re-polls at once after a 204) from ``--poll-procs`` processes of their own, as real workers are:
held in the submitting process, one asyncio loop with 1,000 connections delayed its own submits by
2-10 s during the re-poll waves, which the server did not (curl saw 7-20 ms). After a warm-up it
reads, over ``--measure-s`` seconds:
server CPU (% of one core, /proc, the server's process tree), server RSS, the CPU of the
PostgreSQL backends of the bench database and its transactions/s (pg_stat_database). Then it
submits ``--jobs`` echo jobs one at a time (``--gap-s`` apart, round-robin over the users) and
reports the submit call's latency and the time from the submit call starting to a waiting poll
receiving the job (p50 / max). Loopback only; it stops the server it started and drops its database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

PG = "postgresql://postgres@127.0.0.1:5432"
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += _tree(int(p))
    return out


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    return out


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings by the processes alive at the second one."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _cli(code: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "api", *args], cwd=code, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


async def _poller(c: httpx.AsyncClient, key: str, n: int, stop: asyncio.Event) -> None:
    h = {"Authorization": f"Bearer {key}"}
    body = {
        "worker_id": f"w{n}",
        "lanes": ["gpu", "cpu"],
        "content_types": ["echo"],
        "wait_s": 30,
        "max_jobs": 1,
    }
    while not stop.is_set():
        try:
            r = await c.post("/worker/claim", headers=h, json=body)
        except (httpx.TransportError, asyncio.CancelledError):
            if stop.is_set():
                return
            await asyncio.sleep(0.1)
            continue
        if r.status_code == 200:
            now = time.time()
            for j in r.json()["jobs"]:
                print(f"got {j['job_id']} {now:.6f}", flush=True)  # read by the parent
                await c.post(
                    "/worker/complete",
                    headers=h,
                    json={"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"},
                )
        elif r.status_code != 204:
            print(f"claim answered {r.status_code}: {r.text[:200]}", file=sys.stderr)
            await asyncio.sleep(1)


async def _poll_child(base: str, keys: list[str], first: int, count: int) -> None:
    """A share of the long-polls, in a process of its own (as real workers are): one asyncio loop
    holding all 1,000 connections was the bottleneck it measured (its own pool stalled submits 2-10 s)."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
        tasks = [
            asyncio.create_task(_poller(c, keys[i % len(keys)], i, stop)) for i in range(first, first + count)
        ]
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_got(child: asyncio.subprocess.Process, got: dict[str, float]) -> None:
    assert child.stdout is not None
    async for line in child.stdout:
        parts = line.decode().split()
        if len(parts) == 3 and parts[0] == "got":
            got[parts[1]] = float(parts[2])


async def main(a: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.polls * 2 + 1000)), hard))
    code = Path(a.code).resolve()
    data = Path(tempfile.mkdtemp(prefix="morag-idle-"))
    dbname = f"morag_idle_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MORAG_DATA_DIR": str(data),
        "MORAG_SECRET_KEY": "bench",
        "MORAG_LOG_LEVEL": "warning",
        "MORAG_CLAIM_WAIT_MAX_S": "30",
        "PYTHONPATH": str(code),
        # N workers would hold N keys; the bench spreads its polls over --users keys instead.
        "MORAG_MAX_POLLS_PER_KEY": str(-(-a.polls // a.users)),
        # ... and those keys' claims are --polls workers' claims: no per-key claim rate either.
        "MORAG_RATE_CLAIM_PER_S": "1000000",
        "MORAG_RATE_CLAIM_BURST": "1000000",
    }
    for k, v in a.set:
        env[k] = v
    admin = None
    if a.backend == "postgres":
        admin = await asyncpg.connect(f"{PG}/test")
        await admin.execute(f'CREATE DATABASE "{dbname}"')
        env["MORAG_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    server = None
    children: list[asyncio.subprocess.Process] = []
    readers: list[asyncio.Task[None]] = []
    try:
        workers, clients = [], []
        for u in range(a.users):
            _cli(code, env, "users", "create", f"u{u}")
            workers.append(_cli(code, env, "keys", "create", "--user", f"u{u}", "--scope", "worker"))
            clients.append(_cli(code, env, "keys", "create", "--user", f"u{u}", "--scope", "client"))
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=code,
            env=env,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
            for _ in range(300):
                try:
                    await c.get("/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            got: dict[str, float] = {}
            began = time.perf_counter()
            share = -(-a.polls // a.poll_procs)
            for first in range(0, a.polls, share):
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--poll-child",
                    base,
                    ",".join(workers),
                    str(first),
                    str(min(share, a.polls - first)),
                    stdout=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
                children.append(child)
                readers.append(asyncio.create_task(_read_got(child, got)))
            await asyncio.sleep(a.warmup_s)
            pids = _tree(server.pid)  # the server's processes only: the pollers are the workers

            async def pg_pids() -> list[int]:
                if admin is None:
                    return []
                rows = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", dbname
                )
                return [r["pid"] for r in rows]

            if admin is not None:
                x0 = await admin.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", dbname
                )
            c0, p0, t0 = _cpu(pids), _cpu(await pg_pids()), time.perf_counter()
            spy = None
            if a.spy:  # its own CPU is not the server's: the server's tree only is measured
                spy = subprocess.Popen(
                    [
                        *(str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(server.pid)),
                        *("-r", "250", "-f", "raw", "-o", str(a.spy), "--nonblocking"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            await asyncio.sleep(a.measure_s)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            backends = await pg_pids()
            c1, p1, t1 = _cpu(pids), _cpu(backends), time.perf_counter()
            rss = _rss_mb(pids)
            dt = t1 - t0
            line = (
                f"{a.backend} polls={a.polls}: server CPU {100 * _delta(c0, c1) / dt:.1f}% of a core, "
                f"RSS {rss:.0f} MB"
            )
            if admin is not None:
                x1 = await admin.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", dbname
                )
                line += (
                    f"; PostgreSQL backends CPU {100 * _delta(p0, p1) / dt:.1f}% ({len(backends)} backends), "
                    f"{(x1 - x0) / dt:.0f} transactions/s"
                )
            print(line, flush=True)
            submit_ms, claim_ms = [], []
            for j in range(a.jobs):
                h = {"Authorization": f"Bearer {clients[j % a.users]}"}
                s0, w0 = time.perf_counter(), time.time()
                r = await c.post(
                    "/api/v1/ingest/file",
                    headers=h,
                    files={"file": ("n.txt", b"hello")},
                    data={"content_type": "echo"},
                )
                s1 = time.perf_counter()
                assert r.status_code == 202, r.text
                tid = r.json()["task_id"]
                submit_ms.append(1000 * (s1 - s0))
                if a.verbose:
                    print(f"  job {j}: submit {1000 * (s1 - s0):.1f} ms at t={s0 - began:.1f} s", flush=True)
                while tid not in got and time.perf_counter() - s0 < 60:
                    await asyncio.sleep(0.002)
                if tid in got:
                    claim_ms.append(1000 * (got[tid] - w0))
                else:
                    print(f"job {tid} not claimed within 60 s", file=sys.stderr)
                await asyncio.sleep(a.gap_s)

            def pct(xs: list[float]) -> str:
                return f"p50 {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms" if xs else "none"

            print(
                f"{a.backend} polls={a.polls}: submit {pct(submit_ms)}; submit->claimed {pct(claim_ms)} "
                f"({len(claim_ms)}/{a.jobs} claimed)",
                flush=True,
            )
    finally:
        for child in children:
            if child.returncode is None:
                os.killpg(child.pid, signal.SIGTERM)
                await child.wait()
        for reader in readers:
            reader.cancel()
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="print each submit's latency and when it ran")
    p.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--polls", type=int, default=100)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--gap-s", type=float, default=0.2)
    p.add_argument("--warmup-s", type=float, default=8.0)
    p.add_argument("--measure-s", type=float, default=20.0)
    p.add_argument("--code", default=str(Path(__file__).resolve().parent.parent), help="checkout to serve")
    p.add_argument(
        "--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="extra MORAG_* setting"
    )
    p.add_argument("--spy", type=Path, help="py-spy the server over the measured window into this file (raw)")
    p.add_argument("--poll-procs", type=int, default=4, help="processes the long-polls are spread over")
    if sys.argv[1:2] == ["--poll-child"]:
        base, keys, first, count = sys.argv[2:6]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_poll_child(base, keys.split(","), int(first), int(count)))
        sys.exit(0)
    asyncio.run(main(p.parse_args()))
