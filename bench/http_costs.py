"""Server CPU per request, by endpoint, over real HTTP: where a job's server time goes.

    .venv/bin/python bench/http_costs.py [--jobs 400] [--sqlite]

Starts the real server (``python -m api serve``, loopback, a fresh PostgreSQL database or SQLite
file), then times from /proc the server process's CPU (and the database backends' on PostgreSQL)
over each phase, driven by one keep-alive client:
- submit: ``POST /process/url?wait_s=0``, one job per call;
- claim 1 + complete 1: the worker protocol one job at a time;
- claim 8 + complete-batch 8;
- claim 8 carrying the previous 8 results (``results`` riding on the claim);
- first, the floor: ``GET /health``, which does no work, through the same middleware and server.
Prints ms of CPU per job for each phase and database transactions per job.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_bench import PG_URL, free_port, pg, pg_backends, pg_xacts, proc_stat, profiled, tree, wait_until


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        st = proc_stat(pid)
        if st:
            total += (st[0] + st[1]) / os.sysconf("SC_CLK_TCK")
    return total


def bench_server_env(
    work: Path, sqlite: bool, settings: list[str], db_prefix: str
) -> tuple[dict[str, str], str | None, str, str]:
    """The environment of a bench server (data in ``work``, per-key rate limits lifted, ``settings``
    as MORAG_X=V), a fresh PostgreSQL database unless ``sqlite``, a user with a worker key and a
    client key: (env, database name or None, worker key, client key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
    env.update(MORAG_DATA_DIR=str(work), MORAG_SECRET_KEY="bench", MORAG_LOG_LEVEL="warning")
    env.update(
        {f"MORAG_RATE_{k}": "1000000" for k in ("SUBMIT_PER_S", "SUBMIT_BURST", "CLAIM_PER_S", "CLAIM_BURST")}
    )
    env.update(kv.split("=", 1) for kv in settings)
    db = None
    if not sqlite:
        db = f"{db_prefix}_{uuid.uuid4().hex[:8]}"
        pg(f'CREATE DATABASE "{db}"')
        env["MORAG_DATABASE_URL"] = PG_URL.format(db=db).replace("postgresql:", "postgresql+asyncpg:")

    def cli(*a: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "api", *a], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1].split()[-1]

    cli("users", "create", "bench")
    wk = cli("keys", "create", "--user", "bench", "--scope", "worker")
    ck = cli("keys", "create", "--user", "bench", "--scope", "client")
    return env, db, wk, ck


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--sqlite", action="store_true")
    ap.add_argument("--cprofile", type=Path, help="run the server under cProfile, stats written here at exit")
    ap.add_argument("--only", help="run only the phases whose name contains this")
    ap.add_argument("--spy", type=Path, help="py-spy each phase of the server into this folder (raw stacks)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="MORAG_X=V", help="a server setting (repeatable)"
    )
    args = ap.parse_args()
    n = args.jobs
    work = Path(tempfile.mkdtemp(prefix="morag-http-costs-"))
    env, db, wk, ck = bench_server_env(work, args.sqlite, args.set, "morag_costs")
    port = free_port()
    prof = ["-m", "cProfile", "-o", str(args.cprofile)] if args.cprofile else []
    server = subprocess.Popen(
        [sys.executable, *prof, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(work / "server.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ck}"}, timeout=30)
        w = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {wk}"}, timeout=30)
        wait_until(lambda: _ok(c), 60, "server health", step=0.1)

        def submit(k: int) -> None:
            for i in range(k):
                r = c.post(
                    "/process/url",
                    params={"wait_s": 0},
                    json={"url": f"https://x.invalid/{i}", "content_type": "echo"},
                )
                assert r.status_code == 202, r.text

        def claim(k: int, results: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
            body: dict[str, object] = {
                "worker_id": "w1",
                "lanes": ["cpu"],
                "content_types": ["echo"],
                "wait_s": 0,
                "max_jobs": k,
            }
            if results is not None:
                body["results"] = results
            r = w.post("/worker/claim", json=body)
            assert r.status_code in (200, 204), r.text
            return [] if r.status_code == 204 else r.json()["jobs"]

        def res(jobs: list[dict[str, str]]) -> list[dict[str, str]]:
            return [{"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"} for j in jobs]

        def one_by_one() -> None:
            while jobs := claim(1):
                for j in jobs:
                    assert w.post("/worker/complete", json=res([j])[0]).status_code == 200

        def batched() -> None:
            while jobs := claim(8):
                assert w.post("/worker/complete-batch", json={"results": res(jobs)}).status_code == 200

        def riding() -> None:
            jobs = claim(8)
            while jobs:
                jobs = claim(8, res(jobs))

        submit(20)
        one_by_one()  # warm-up: imports, caches, presence

        def floor() -> None:  # the same client, a request that does nothing: the per-request floor
            for _ in range(n):
                assert c.get("/health").status_code == 200

        phases = [("floor: GET /health", floor)]
        phases += [("submit", lambda: submit(n)), ("claim 1 + complete 1", one_by_one)]
        phases += [("submit", lambda: submit(n)), ("claim 8 + complete-batch 8", batched)]
        phases += [("submit", lambda: submit(n)), ("claim 8 carrying 8 results", riding)]
        print(f"{'phase':32} {'jobs/s':>8} {'server ms/job':>14} {'db ms/job':>10} {'xacts/job':>10}")
        for name, fn in phases:
            if args.only and args.only not in name and name != "submit" and not name.startswith("floor"):
                continue
            time.sleep(0.3)
            s0, d0 = cpu_s(tree(server.pid)), cpu_s(pg_backends(db) if db else [])
            x0 = pg_xacts(db) if db else None
            spy = args.spy and args.spy / f"{name.replace(' ', '-')}.txt"
            if spy:
                args.spy.mkdir(parents=True, exist_ok=True)
            with profiled([server.pid], spy):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            s1, d1 = cpu_s(tree(server.pid)), cpu_s(pg_backends(db) if db else [])
            x1 = pg_xacts(db) if db else None
            xa = "-" if x0 is None or x1 is None else f"{(x1 - x0) / n:.2f}"
            print(
                f"{name:32} {n / dt:8.0f} {(s1 - s0) * 1000 / n:14.2f} {(d1 - d0) * 1000 / n:10.2f} {xa:>10}",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGINT)  # a clean exit: cProfile writes its stats
        server.wait(30)
        if db:
            pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _ok(c: httpx.Client) -> bool:
    try:
        return c.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
