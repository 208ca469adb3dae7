"""Where dispatch latency goes: submit -> the long-polling claim's answer, split in its legs.

    .venv/bin/python bench/dispatch_latency.py [--samples 100] [--sqlite] [--set MORAG_X=V]

Starts the real server (loopback, a fresh PostgreSQL database or SQLite file) and one raw HTTP
claimer (a keep-alive client in a thread of its own, long-polling ``POST /worker/claim``) in place
of the worker, then submits one job at a time (``POST /process/url?wait_s=0``) and times, on one
clock: the submit call (start -> answer), and the gap from the submit's answer to the claim's
answer carrying that job. The claimer completes each job before the next submit. Prints p50/p90/p99
of each leg and of the sum (submit start -> claim answered).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_bench import free_port, percentile, pg, wait_until
from http_costs import _ok, bench_server_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--sqlite", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="MORAG_X=V", help="a server setting")
    ap.add_argument(
        "--worker",
        type=int,
        default=0,
        metavar="N",
        help="N real worker processes (python -m worker, 4 slots each) in place of the raw claimer; "
        "the last leg then ends at the handler's start (the worker's JSON log line)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="morag-dispatch-"))
    env, db, wk, ck = bench_server_env(work, args.sqlite, args.set, "morag_dispatch")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(work / "server.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    claimed: queue.Queue[tuple[float, str]] = queue.Queue()  # (when answered, the job's URL)
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []
    wall_offset = time.time() - time.perf_counter()  # the workers' log times onto perf_counter

    def workers() -> None:
        """Real workers; their JSON log lines say when each handler started (wall clock)."""
        wenv = {k: v for k, v in env.items() if not k.startswith("MORAG_")}
        for n in range(args.worker):
            log = work / f"worker{n}.log"
            procs.append(
                subprocess.Popen(
                    [
                        *(
                            sys.executable,
                            "-m",
                            "worker",
                            "--api-key",
                            wk,
                            "--server",
                            base,
                            "--name",
                            f"w{n}",
                        ),
                        *("--content-types", "echo", "--lanes", "cpu", "--concurrency", "4"),
                        *("--temp-dir", str(work / f"w{n}"), "--log-format", "json"),
                    ],
                    env=wenv,
                    stdout=open(log, "wb"),
                    stderr=subprocess.STDOUT,
                )
            )
            wait_until(lambda log=log: "serving lanes" in log.read_text(), 60, "a worker to start", step=0.1)
        offsets = dict.fromkeys(range(args.worker), 0)
        while not stop.is_set():
            for n in range(args.worker):
                with open(work / f"worker{n}.log", "rb") as f:
                    f.seek(offsets[n])
                    data = f.read()
                    cut = data.rfind(b"\n") + 1
                    offsets[n] += cut
                for line in data[:cut].splitlines():
                    rec = json.loads(line) if line.startswith(b"{") else {}
                    if "processing   0%" in rec.get("msg", ""):
                        when = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
                        claimed.put((when - wall_offset, rec["job_id"]))
            time.sleep(0.002)

    def claimer() -> None:
        w = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {wk}"}, timeout=60)
        body = {
            "worker_id": "w1",
            "lanes": ["cpu"],
            "content_types": ["echo"],
            "wait_s": 5,
            "max_jobs": int(os.environ.get("PROBE_MAX", "1")),
        }
        while not stop.is_set():
            r = w.post("/worker/claim", json=body)
            t = time.perf_counter()
            if r.status_code == 204:
                continue
            assert r.status_code == 200, r.text
            for j in r.json()["jobs"]:
                done = {"job_id": j["job_id"], "lease_token": j["lease_token"], "markdown": "ok"}
                assert w.post("/worker/complete", json=done).status_code == 200
                claimed.put((t, j["job_id"]))

    try:
        c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ck}"}, timeout=30)
        wait_until(lambda: _ok(c), 60, "server health", step=0.1)
        th = threading.Thread(target=workers if args.worker else claimer, daemon=True)
        th.start()
        sub, gap, total = [], [], []
        for i in range(args.samples + 10):
            time.sleep(0.03)  # the claimer is back in its long-poll
            t0 = time.perf_counter()
            r = c.post(
                "/process/url",
                params={"wait_s": 0},
                json={"url": f"https://x.invalid/{i}", "content_type": "echo"},
            )
            t1 = time.perf_counter()
            assert r.status_code == 202, r.text
            t2, task = claimed.get(timeout=30)
            assert task == r.json()["task_id"], (task, r.text)
            if i >= 10:  # warm-up: imports, caches, presence
                sub.append((t1 - t0) * 1000)
                gap.append((t2 - t1) * 1000)
                total.append((t2 - t0) * 1000)
        last = "handler started" if args.worker else "claim answered"
        for name, xs in (("submit call", sub), (f"submit answered -> {last}", gap), ("total", total)):
            print(
                f"{name:36} p50 {statistics.median(xs):6.2f}  p90 {percentile(xs, 90):6.2f}  "
                f"p99 {percentile(xs, 99):6.2f} ms"
            )
    finally:
        stop.set()
        for p in procs:
            p.send_signal(signal.SIGINT)
            p.wait(30)
        server.send_signal(signal.SIGINT)
        server.wait(30)
        if db:
            pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
