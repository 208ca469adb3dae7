"""End-to-end queue benchmark, side by side: morag-remote vs Celery + Redis, PgQueuer, procrastinate.

    .venv/bin/python bench/e2e_bench.py [--quick] [--rounds 3] [--jobs 1000] [--samples 100]
        [--systems morag-pg,morag-sqlite,celery,pgqueuer,procrastinate] [--transfer] [--no-docs]

`make bench` runs it and rewrites the marked section of docs/benchmarks.md.

Everything runs on loopback and is started and stopped here: the real server (`python -m api serve`,
keys made with `python -m api users|keys create`) and real workers (`python -m worker`, `echo` jobs
submitted as `POST /process/url?wait_s=0`), driven over HTTP only; the peers from a venv of their
own (bench/.peers-venv, installed from PyPI on first use) with their client in bench/peers/driver.py.
Every system gets 2 worker processes x 4 slots, a fresh PostgreSQL database (or a fresh SQLite
file, or its own Redis queue) per round, and the rounds interleave the systems.

Per round and system (see docs/benchmarks.md for the method in full):
- enqueue: N jobs, one call each, workers paused (SIGSTOP) -> jobs/s;
- drain: SIGCONT the workers, time until every handler has started and the queue reports no
  unfinished job -> N / seconds;
- CPU per job from /proc (utime+stime): server process tree, the database backends of this
  database (or redis-server), the worker processes; over enqueue + drain;
- database transactions per job: pg_stat_database xact_commit+xact_rollback of the fresh database
  over enqueue + drain (read after the backends' 10 s idle flush); Redis: commands per job;
- dispatch latency: with idle workers, one job at a time, from the moment the submit call starts to
  the handler's start (the worker's own wall clock: morag-remote's JSON log line "processing 0%
  starting", logged just before the processor thread starts; the peers' handlers write a line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
PEERS_VENV = ROOT / "bench" / ".peers-venv"
PEER_PACKAGES = ["celery[redis]>=5,<6", "pgqueuer", "procrastinate", "psycopg[binary]", "asyncpg"]
PG_ADMIN = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres", "-tAq", "-c"]
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
REDIS_URL = "redis://127.0.0.1:6379/15"
DOC = ROOT / "docs" / "benchmarks.md"
MARK_START = "<!-- e2e-queue-bench:start (rewritten by `make bench`) -->"
MARK_END = "<!-- e2e-queue-bench:end -->"
SYSTEMS = ["morag-pg", "morag-sqlite", "celery", "pgqueuer", "procrastinate"]
LABELS = {
    "morag-pg": "morag-remote (PostgreSQL)",
    "morag-sqlite": "morag-remote (SQLite)",
    "celery": "Celery 5 + Redis",
    "pgqueuer": "PgQueuer",
    "procrastinate": "procrastinate",
}
WORKERS, SLOTS = 2, 4
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
STATS_FLUSH_S = 10.5  # PostgreSQL 15 backends flush their counters at most 10 s after going idle


# ----- pure parts (unit-tested) ----------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def fmt_spread(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    med, lo, hi = spread(values)
    if len(values) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}-{fmt(hi, digits)})"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def rewrite_section(text: str, body: str, before: str = "## Queue (job table)") -> str:
    """Put ``body`` between the markers; insert the marked block before ``before`` (or at the end)."""
    block = f"{MARK_START}\n{body.rstrip()}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        return head + block + tail
    if before in text:
        head, tail = text.split(before, 1)
        return head + block + "\n\n" + before + tail
    return text.rstrip() + "\n\n" + block + "\n"


@dataclass
class RoundResult:
    system: str
    jobs: int
    enqueue_s: float
    drain_s: float
    latencies_ms: list[float]
    submit_ms: list[float]
    server_cpu_s: float
    db_cpu_s: float
    worker_cpu_s: float
    xacts: int | None  # PostgreSQL transactions, or Redis commands for Celery
    idle_xacts_per_s: float | None
    server_rss_mb: float | None
    load: float
    notes: list[str] = field(default_factory=list)

    @property
    def drain_rate(self) -> float:
        return self.jobs / self.drain_s

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_s

    def per_job_ms(self, cpu_s: float) -> float:
        return cpu_s * 1000 / self.jobs


def render_table(results: list[RoundResult], systems: list[str]) -> str:
    """The markdown table: one column per system, medians over rounds (min-max), ratios vs Celery."""
    by: dict[str, list[RoundResult]] = {s: [r for r in results if r.system == s] for s in systems}
    by = {s: rs for s, rs in by.items() if rs}
    cols = list(by)

    def row(title: str, cell: Any) -> str:
        return f"| {title} | " + " | ".join(cell(by[s]) for s in cols) + " |"

    def pooled(rs: list[RoundResult], q: float) -> float | None:
        lat = [x for r in rs for x in r.latencies_ms]
        return percentile(lat, q) if lat else None

    def med(rs: list[RoundResult], f: Any) -> float | None:
        vals = [v for v in (f(r) for r in rs) if v is not None]
        return statistics.median(vals) if vals else None

    celery = by.get("celery")
    lines = [
        "| | " + " | ".join(LABELS[s] for s in cols) + " |",
        "|---|" + "---|" * len(cols),
        row("drain, jobs/s", lambda rs: "**" + fmt_spread([r.drain_rate for r in rs]) + "**"),
        row("enqueue, one job per call, jobs/s", lambda rs: fmt_spread([r.enqueue_rate for r in rs])),
        row(
            "dispatch latency p50 / p99, ms (submit -> handler starts)",
            lambda rs: f"{fmt(pooled(rs, 50), 1)} / {fmt(pooled(rs, 99), 1)}",
        ),
        row(
            "server + database CPU per job, ms (enqueue + drain)",
            lambda rs: fmt_spread([r.per_job_ms(r.server_cpu_s + r.db_cpu_s) for r in rs], 2),
        ),
        row(
            "  of which server / database",
            lambda rs: (
                f"{fmt(med(rs, lambda r: r.per_job_ms(r.server_cpu_s)), 2)} / "
                f"{fmt(med(rs, lambda r: r.per_job_ms(r.db_cpu_s)), 2)}"
            ),
        ),
        row("worker CPU per job, ms", lambda rs: fmt_spread([r.per_job_ms(r.worker_cpu_s) for r in rs], 2)),
        row(
            "database transactions per job (Celery: Redis commands)",
            lambda rs: fmt(med(rs, lambda r: None if r.xacts is None else r.xacts / r.jobs), 1),
        ),
        row(
            "idle (2 workers waiting): transactions/s (Celery: Redis commands/s)",
            lambda rs: fmt(med(rs, lambda r: r.idle_xacts_per_s), 1),
        ),
        row("server RSS, MB (peak)", lambda rs: fmt(med(rs, lambda r: r.server_rss_mb))),
    ]
    if celery:
        c_drain = statistics.median(r.drain_rate for r in celery)
        c_p50, c_p99 = pooled(celery, 50), pooled(celery, 99)
        c_cpu = statistics.median(r.per_job_ms(r.server_cpu_s + r.db_cpu_s) for r in celery)
        lines += [
            row("drain vs Celery", lambda rs: ratio(statistics.median(r.drain_rate for r in rs), c_drain)),
            row(
                "latency p50 / p99 vs Celery",
                lambda rs: f"{ratio(pooled(rs, 50), c_p50)} / {ratio(pooled(rs, 99), c_p99)}",
            ),
            row(
                "server + database CPU vs Celery",
                lambda rs: ratio(
                    statistics.median(r.per_job_ms(r.server_cpu_s + r.db_cpu_s) for r in rs), c_cpu
                ),
            ),
        ]
    return "\n".join(lines)


# ----- /proc -----------------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, utime+stime ticks, rss MB) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21]) * PAGE / 1e6


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def tree(root: int) -> list[int]:
    """``root`` and its descendants."""
    kids: dict[int, list[int]] = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st:
            kids.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pg_backends(db: str) -> list[int]:
    """PostgreSQL server processes working for database ``db`` (title 'postgres: ... USER DB ...')."""
    out = []
    for pid in all_pids():
        c = cmdline(pid)
        if c.startswith("postgres:") and db in c.split():
            out.append(pid)
    return out


def redis_pid() -> int | None:
    for pid in all_pids():
        if cmdline(pid).startswith("redis-server") and ":6379" in cmdline(pid):
            return pid
    return None


class CpuMeter:
    """CPU seconds of process groups over a window; a sampler thread keeps up with pids that come
    and go (a process first seen after the start counts from zero: it was born in the window)."""

    def __init__(self, groups: dict[str, Any], rss_group: str | None = None) -> None:
        self.groups = groups  # name -> callable returning pids
        self.rss_group = rss_group
        self.first: dict[str, dict[int, int]] = {g: {} for g in groups}
        self.last: dict[str, dict[int, int]] = {g: {} for g in groups}
        self.rss_peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def _sample(self) -> None:
        for g, pids_of in self.groups.items():
            rss = 0.0
            for pid in pids_of():
                st = proc_stat(pid)
                if st is None:
                    continue
                if pid not in self.first[g]:
                    self.first[g][pid] = st[1] if not self._started else 0
                self.last[g][pid] = st[1]
                rss += st[2]
            if g == self.rss_group:
                self.rss_peak = max(self.rss_peak, rss)

    def start(self) -> CpuMeter:
        self._sample()
        self._started = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        return {g: sum(self.last[g][p] - self.first[g][p] for p in self.last[g]) / TICK for g in self.groups}


# ----- processes -------------------------------------------------------------------------------
class Procs:
    """Every process this run starts (each in its own session); all are stopped by stop_all()."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            p = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(p)
        return p

    @staticmethod
    def signal(procs: Iterable[subprocess.Popen[bytes]], sig: int) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)

    def stop(self, procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
        self.signal(procs, signal.SIGCONT)
        self.signal(procs, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal([p], signal.SIGKILL)
                p.wait(5)
        self.procs = [p for p in self.procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(self.procs))


def pg(sql: str) -> str:
    return subprocess.run(
        [*PG_ADMIN, sql], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def pg_xacts(db: str) -> int:
    out = pg(f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'")
    return int(out or 0)


def redis_commands() -> int:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "info", "stats"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    m = re.search(r"total_commands_processed:(\d+)", out)
    return int(m.group(1)) if m else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LogTail:
    """New complete lines of a growing file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.buf = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        return [d.decode(errors="replace") for d in done]


def wait_until(cond: Any, timeout: float, what: str, step: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


# ----- systems ---------------------------------------------------------------------------------
class System:
    """One queue under test for one round: start, submit, watch handler starts, finished, stop."""

    name = ""
    db: str | None = None

    def __init__(self, procs: Procs, rdir: Path) -> None:
        self.procs, self.rdir = procs, rdir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.started: dict[str, float] = {}  # job key -> handler start (unix time)
        self.finished: set[str] = set()
        self.tails: list[LogTail] = []
        self.notes: list[str] = []

    # subclasses
    def start(self) -> None: ...
    def submit(self, seq: int) -> tuple[float, float, str]: ...  # (t0, t1, job key)
    def enqueue(self, start: int, n: int) -> tuple[float, float, list[str]]: ...
    def pending(self, keys: set[str]) -> int: ...  # unfinished jobs among keys
    def server_pids(self) -> list[int]:
        return []

    def parse(self, line: str) -> None: ...

    def poll(self) -> None:
        for t in self.tails:
            for line in t.lines():
                self.parse(line)

    def db_pids(self) -> list[int]:
        return pg_backends(self.db) if self.db else []

    def worker_pids(self) -> list[int]:
        return [p for w in self.workers if w.poll() is None for p in tree(w.pid)]

    def xacts(self) -> int | None:
        return pg_xacts(self.db) if self.db else None

    def stop(self) -> None:
        self.procs.stop(self.workers + self.others)

    def drop(self) -> None:
        if self.db:
            pg(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


class Morag(System):
    def __init__(self, procs: Procs, rdir: Path, backend: str) -> None:
        super().__init__(procs, rdir)
        self.backend = backend
        self.name = f"morag-{'pg' if backend == 'postgresql' else 'sqlite'}"
        self.db = f"bench_morag_{uuid.uuid4().hex[:10]}" if backend == "postgresql" else None
        self.server: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def cli(self, env: dict[str, str], *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "api", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode:
            raise RuntimeError(f"python -m api {' '.join(args)} failed: {r.stderr[-2000:]}")
        return r.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
        env.update(
            MORAG_DATA_DIR=str(self.rdir / "data"), MORAG_SECRET_KEY="bench-secret", PYTHONUNBUFFERED="1"
        )
        # The per-key abuse limits (api/ratelimit.py) are not the queue's speed: lift them, as an
        # operator whose one client submits thousands of jobs would.
        env.update(
            MORAG_RATE_SUBMIT_PER_S="1000000",
            MORAG_RATE_SUBMIT_BURST="1000000",
            MORAG_RATE_CLAIM_PER_S="1000000",
            MORAG_RATE_CLAIM_BURST="1000000",
        )
        if self.db:
            pg(f'CREATE DATABASE "{self.db}"')
            env["MORAG_DATABASE_URL"] = PG_URL.format(db=self.db).replace(
                "postgresql:", "postgresql+asyncpg:"
            )
        self.cli(env, "users", "create", "bench")
        worker_key = self.cli(env, "keys", "create", "--user", "bench", "--scope", "worker")
        client_key = self.cli(env, "keys", "create", "--user", "bench", "--scope", "client")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.server = self.procs.start(
            [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            self.rdir / "server.log",
            env,
        )
        self.others.append(self.server)
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {client_key}"}, timeout=30
        )

        def healthy() -> bool:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError("server exited: " + (self.rdir / "server.log").read_text()[-2000:])
            try:
                return bool(self.client.get("/health").status_code == 200)
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the server's /health", step=0.1)
        # The server's settings stay out of the workers' environment; worker options set in the
        # bench's own environment (MORAG_WORKER_PIPELINE=0, say) reach them, for A/B runs.
        wenv = {k: v for k, v in env.items() if not k.startswith("MORAG_")}
        wenv |= {k: v for k, v in os.environ.items() if k.startswith("MORAG_WORKER_")}
        for i in range(WORKERS):
            log = self.rdir / f"worker{i}.log"
            self.workers.append(
                self.procs.start(
                    [
                        sys.executable,
                        "-m",
                        "worker",
                        "--api-key",
                        worker_key,
                        "--server",
                        url,
                        "--name",
                        f"bench-w{i}",
                        "--content-types",
                        "echo",
                        "--lanes",
                        "cpu",
                        "--concurrency",
                        str(SLOTS),
                        "--temp-dir",
                        str(self.rdir / f"w{i}"),
                        "--log-format",
                        "json",
                    ],
                    log,
                    wenv,
                )
            )
            self.tails.append(LogTail(log))
        for i in range(WORKERS):
            wait_until(
                lambda i=i: "serving lanes" in (self.rdir / f"worker{i}.log").read_text(),
                60,
                f"worker {i} to start",
                step=0.1,
            )

    def server_pids(self) -> list[int]:
        return tree(self.server.pid) if self.server and self.server.poll() is None else []

    def submit(self, seq: int) -> tuple[float, float, str]:
        t0 = time.time()
        r = self.client.post(
            "/process/url",
            params={"wait_s": 0},
            json={"url": f"https://bench.invalid/{seq}", "content_type": "echo"},
        )
        t1 = time.time()
        if r.status_code != 202:
            raise RuntimeError(f"submit answered {r.status_code}: {r.text[:500]}")
        return t0, t1, str(r.json()["task_id"])

    def enqueue(self, start: int, n: int) -> tuple[float, float, list[str]]:
        t0 = time.time()
        keys = [self.submit(seq)[2] for seq in range(start, start + n)]
        return t0, time.time(), keys

    def parse(self, line: str) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return
        job, phase = rec.get("job_id"), rec.get("phase")
        if not job:
            return
        if phase == "processing" and "starting" in rec.get("msg", "") and job not in self.started:
            ts = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            self.started[job] = ts.timestamp()
        elif phase == "delivered":
            self.finished.add(job)  # the server acknowledged the result

    def pending(self, keys: set[str]) -> int:
        self.poll()
        return len(keys - self.finished)

    def requests(self) -> dict[str, float]:
        """Requests answered so far, by route (the server's /metrics)."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.client is not None
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(self.client.get("/metrics").text):
            if fam.name != "morag_http_requests":
                continue
            for sample in fam.samples:
                if sample.name.endswith("_total") and sample.labels["route"].startswith("/worker/"):
                    route = sample.labels["route"]
                    out[route] = out.get(route, 0.0) + sample.value
        return out

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        super().stop()


class Peer(System):
    """Celery / PgQueuer / procrastinate: workers in bench/.peers-venv, client in peers/driver.py."""

    def __init__(self, procs: Procs, rdir: Path, name: str) -> None:
        super().__init__(procs, rdir)
        self.name = name
        self.db = f"bench_{name}_{uuid.uuid4().hex[:10]}" if name != "celery" else None
        self.queue = f"bench-{uuid.uuid4().hex[:10]}"
        self.driver: subprocess.Popen[str] | None = None
        self.marks = rdir / "marks"
        self.pending_queries = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(PEERS_DIR),
            BENCH_MARKS_DIR=str(self.marks),
            BENCH_QUEUE=self.queue,
            BENCH_REDIS_URL=REDIS_URL,
            PYTHONUNBUFFERED="1",
        )
        if self.db:
            env["BENCH_PG_DSN"] = PG_URL.format(db=self.db)
        return env

    def start(self) -> None:
        self.marks.mkdir(parents=True, exist_ok=True)
        env, py, bindir = self.env(), str(PEERS_VENV / "bin" / "python"), PEERS_VENV / "bin"
        if self.db:
            pg(f'CREATE DATABASE "{self.db}"')
        if self.name == "pgqueuer":
            subprocess.run(
                [str(bindir / "pgq"), "--pg-dsn", env["BENCH_PG_DSN"], "install"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            argv = [py, str(PEERS_DIR / "pgq_app.py"), str(SLOTS)]
        elif self.name == "procrastinate":
            subprocess.run(
                [str(bindir / "procrastinate"), "--app=proc_app.app", "schema", "--apply"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            argv = [
                str(bindir / "procrastinate"),
                "--app=proc_app.app",
                "worker",
                "--concurrency",
                str(SLOTS),
                "--queues",
                "bench",
            ]
        else:
            argv = [
                str(bindir / "celery"),
                "-A",
                "celery_app",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(SLOTS),
                "-Q",
                self.queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
                "-n",
                f"{self.queue}-%i@%h",
            ]
        for i in range(WORKERS):
            self.workers.append(self.procs.start(argv, self.rdir / f"worker{i}.log", env, cwd=PEERS_DIR))
        self.driver = subprocess.Popen(
            [py, str(PEERS_DIR / "driver.py"), self.name],
            cwd=PEERS_DIR,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.rdir / "driver.log").open("ab"),
            start_new_session=True,
        )
        self.procs.procs.append(self.driver)  # type: ignore[arg-type]
        self.others.append(self.driver)  # type: ignore[arg-type]
        if not self._recv().get("ready"):
            raise RuntimeError(f"{self.name} driver did not start")

    def _send(self, **cmd: Any) -> dict[str, Any]:
        assert self.driver and self.driver.stdin
        self.driver.stdin.write(json.dumps(cmd) + "\n")
        self.driver.stdin.flush()
        return self._recv()

    def _recv(self) -> dict[str, Any]:
        assert self.driver and self.driver.stdout
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} driver exited: {(self.rdir / 'driver.log').read_text()[-2000:]}")
        return dict(json.loads(line))

    def submit(self, seq: int) -> tuple[float, float, str]:
        r = self._send(op="submit", seq=seq)
        return r["t0"], r["t1"], str(seq)

    def enqueue(self, start: int, n: int) -> tuple[float, float, list[str]]:
        r = self._send(op="enqueue", start=start, n=n)
        return r["t0"], r["t1"], [str(s) for s in range(start, start + n)]

    def poll(self) -> None:
        known = {t.path for t in self.tails}
        for p in sorted(self.marks.glob("marks-*.log")):
            if p not in known:
                self.tails.append(LogTail(p))
        super().poll()

    def parse(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 3:
            ev, key, t = parts
            if ev == "start":
                self.started.setdefault(key, float(t))
            elif ev == "end":
                self.finished.add(key)

    def pending(self, keys: set[str]) -> int:
        """Unfinished among ``keys``: handlers not yet returned, plus what the queue itself still holds."""
        self.poll()
        left = len(keys - self.finished)
        if left:
            return left
        self.pending_queries += 1
        return int(self._send(op="pending")["pending"])

    def db_pids(self) -> list[int]:
        if self.name == "celery":
            pid = redis_pid()
            return [pid] if pid else []
        return super().db_pids()

    def xacts(self) -> int | None:
        if self.name == "celery":
            return redis_commands()
        return super().xacts()

    def stop(self) -> None:
        if self.driver and self.driver.poll() is None:
            with contextlib.suppress(Exception):
                self._send(op="quit")
        super().stop()


def make_system(name: str, procs: Procs, rdir: Path) -> System:
    if name == "morag-pg":
        return Morag(procs, rdir, "postgresql")
    if name == "morag-sqlite":
        return Morag(procs, rdir, "sqlite")
    return Peer(procs, rdir, name)


# ----- one round of one system -----------------------------------------------------------------
@contextlib.contextmanager
def profiled(pids: list[int], out: Path | None) -> Iterable[None]:
    """py-spy (if installed) samples the server's main process meanwhile; raw collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if out is None or not pids or not Path(spy).exists():
        yield
        return
    proc = subprocess.Popen(
        [spy, "record", "-p", str(pids[0]), "-r", "250", "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def run_one(
    system: System, jobs: int, samples: int, log: Any, profile_dir: Path | None = None
) -> RoundResult:
    system.start()
    seq = 0

    def one_job(timeout: float = 30) -> tuple[float, float]:
        """Submit one job to idle workers: ms from the submit call's start to the handler's start,
        and ms the submit call took."""
        nonlocal seq
        t0, t1, key = system.submit(seq)
        seq += 1

        def seen() -> bool:
            system.poll()
            return key in system.started

        wait_until(seen, timeout, f"{system.name}: handler start of job {key}")
        wait_until(lambda: system.pending({key}) == 0, timeout, f"{system.name}: job {key} finished", 0.005)
        return (system.started[key] - t0) * 1000, (t1 - t0) * 1000

    # warm-up: imports, connections, both worker processes
    for _ in range(2 * WORKERS * SLOTS):
        one_job(120)

    # drain: workers paused while N jobs are enqueued, then resumed
    time.sleep(0.5)
    Procs.signal(system.workers, signal.SIGSTOP)
    time.sleep(0.2)
    x0 = system.xacts()
    cpu = CpuMeter(
        {"server": system.server_pids, "db": system.db_pids, "worker": system.worker_pids}, rss_group="server"
    ).start()
    with profiled(system.server_pids(), profile_dir and profile_dir / f"{system.name}-enqueue.txt"):
        t0, t1, keys = system.enqueue(seq, jobs)
    seq += jobs
    enqueue_cpu = cpu.stop()
    wanted = set(keys)
    cpu = CpuMeter(
        {"server": system.server_pids, "db": system.db_pids, "worker": system.worker_pids}, rss_group="server"
    ).start()
    rss_enqueue = cpu.rss_peak
    spy = profiled(system.server_pids(), profile_dir and profile_dir / f"{system.name}-drain.txt")
    spy.__enter__()
    first_worker = [system.workers[0].pid] if system.workers else []
    wspy = profiled(first_worker, profile_dir and profile_dir / f"{system.name}-worker-drain.txt")
    wspy.__enter__()
    before = system.requests() if hasattr(system, "requests") else None
    t_resume = time.time()
    Procs.signal(system.workers, signal.SIGCONT)

    def all_started() -> bool:
        system.poll()
        return wanted <= system.started.keys()

    wait_until(all_started, max(120, jobs / 5), f"{system.name}: every handler to start", 0.005)
    last_start = max(system.started[k] for k in wanted)
    wait_until(lambda: system.pending(wanted) == 0, 120, f"{system.name}: the queue to empty", 0.005)
    t_empty = time.time()
    drain_cpu = cpu.stop()
    spy.__exit__(None, None, None)
    wspy.__exit__(None, None, None)
    if before is not None:  # worker requests per drained job, by route
        after = system.requests()  # type: ignore[attr-defined]
        per_job = {r.removeprefix("/worker/"): (n - before.get(r, 0.0)) / jobs for r, n in after.items()}
        system.notes.append(
            "worker requests/job: " + ", ".join(f"{r} {v:.2f}" for r, v in sorted(per_job.items()) if v > 0)
        )
    drain_s = max(last_start, t_empty) - t_resume
    system.notes.append(  # which process the drain was bound by: CPU per job and share of a core
        "drain CPU: "
        + ", ".join(
            f"{g} {drain_cpu[g] / jobs * 1000:.2f} ms/job ({drain_cpu[g] / drain_s:.0%} of a core)"
            for g in ("server", "db", "worker")
        )
    )
    time.sleep(STATS_FLUSH_S)
    x1 = system.xacts()
    # The same length of idle time again: what the idle system does on its own (long-polls, polling)
    # also fell into the window above; it is measured here and taken off.
    time.sleep(STATS_FLUSH_S)
    x2 = system.xacts()
    xacts = idle_rate = None
    if x0 is not None and x1 is not None and x2 is not None:
        own = getattr(system, "pending_queries", 0) * (2 if system.name == "celery" else 1)  # our queries
        idle_rate = (x2 - x1) / STATS_FLUSH_S
        xacts = x1 - x0 - own - (x2 - x1)

    # dispatch latency: idle workers, one job at a time
    lat, sub = [], []
    for _ in range(samples):
        a, b = one_job()
        lat.append(a)
        sub.append(b)
        time.sleep(0.02)
    res = RoundResult(
        system=system.name,
        jobs=jobs,
        enqueue_s=t1 - t0,
        drain_s=drain_s,
        latencies_ms=lat,
        submit_ms=sub,
        server_cpu_s=enqueue_cpu["server"] + drain_cpu["server"],
        db_cpu_s=enqueue_cpu["db"] + drain_cpu["db"],
        worker_cpu_s=enqueue_cpu["worker"] + drain_cpu["worker"],
        xacts=xacts,
        idle_xacts_per_s=idle_rate,
        server_rss_mb=max(rss_enqueue, cpu.rss_peak) or None,
        load=os.getloadavg()[0],
        notes=system.notes,
    )
    print(
        f"  {system.name}: enqueue {res.enqueue_rate:.0f}/s, drain {res.drain_rate:.0f}/s, "
        f"p50 {percentile(lat, 50):.1f} ms p99 {percentile(lat, 99):.1f} ms, "
        f"server+db {res.per_job_ms(res.server_cpu_s + res.db_cpu_s):.2f} ms/job "
        f"(server {res.per_job_ms(res.server_cpu_s):.2f}, db {res.per_job_ms(res.db_cpu_s):.2f}), "
        f"worker {res.per_job_ms(res.worker_cpu_s):.2f} ms/job, "
        f"xacts/job {'n/a' if xacts is None else f'{xacts / jobs:.1f}'}, "
        f"RSS {res.server_rss_mb or 0:.0f} MB, load {res.load:.2f}" + "".join(f"; {n}" for n in res.notes),
        file=log,
        flush=True,
    )
    return res


# ----- set-up ----------------------------------------------------------------------------------
def ensure_peers_venv() -> None:
    py = PEERS_VENV / "bin" / "python"
    if (
        py.exists()
        and subprocess.run(
            [str(py), "-c", "import celery, pgqueuer, procrastinate, redis"], capture_output=True
        ).returncode
        == 0
    ):
        return
    print(f"installing the peers into {PEERS_VENV} (from PyPI) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True, timeout=900)


def versions() -> str:
    py = str(PEERS_VENV / "bin" / "python")
    if not Path(py).exists():  # only morag-remote was run
        return "none run"
    code = (
        "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
        "('celery', 'redis', 'pgqueuer', 'procrastinate', 'psycopg', 'asyncpg')))"
    )
    r = subprocess.run([py, "-c", code], capture_output=True, text=True)
    return r.stdout.strip()


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError):
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem = int(m.group(1)) / 1024**2 if m else 0.0
    py = platform.python_version()
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GB RAM, {platform.machine()}, Python {py}"


def docs_body(
    results: list[RoundResult], systems: list[str], args: argparse.Namespace, loads: list[float], extra: str
) -> str:
    rounds = max((sum(1 for r in results if r.system == s) for s in systems), default=0)
    table = render_table(results, systems)
    return f"""## Queue end to end (`make bench`)

`make bench` (`bench/e2e_bench.py`) runs the real server (`python -m api serve`, its defaults: uvicorn
with uvloop/httptools, access log on) and 2 real worker
processes (`python -m worker --concurrency 4`, `echo` jobs sent as `POST /process/url?wait_s=0`)
over HTTP, and in the same run Celery 5 + Redis (threads pool), PgQueuer and procrastinate, each with
2 worker processes x 4 slots and a no-op handler, on the same PostgreSQL 15 / Redis 7 (loopback,
stock settings, `synchronous_commit = on`). Each system gets a fresh database (or SQLite file, or
Redis queue) per round; rounds interleave the systems. Per round: {args.jobs:,} jobs enqueued one call
each with the workers paused (SIGSTOP), then the drain is timed from SIGCONT until every handler has
started and the queue holds no unfinished job (morag-remote: the worker logged the server's
acknowledgement of every result; peers: every handler returned and the queue's own table/list is
empty). Dispatch latency: {args.samples} jobs per round, one at a time to idle workers, from the start
of the submit call to the handler's start as logged by the worker process (morag-remote: the JSON log
line `processing 0% starting`, written just before the processor thread starts, ms resolution; peers:
`time.time()` written by the handler); p50/p99 pooled over the rounds. CPU: utime+stime from /proc over
enqueue + drain, per job: the server process tree; the PostgreSQL backends serving this database
(found by their process title; the shared WAL writer/checkpointer are not counted), or redis-server
for Celery (no server of its own). Transactions: `pg_stat_database` xact_commit + xact_rollback of the
fresh database over enqueue + drain (read {STATS_FLUSH_S} s later, after the backends' idle flush, the
bench's own "is it empty" queries subtracted, and the idle traffic of those seconds, measured over the
same length of idle time right after, subtracted too); for Celery,
Redis commands (`total_commands_processed`, whole server). RSS: peak of the server process.

Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {rounds} round(s) of {args.jobs:,} jobs, {machine()};
load average during the run {min(loads):.1f}-{max(loads):.1f} (the machine is shared with other
engineers' test runs: expect noise, read ratios from the same run). Peers: {versions()}.
Medians over rounds (min-max).

{table}
{extra}"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 jobs, 10 latency samples, 1 round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per drain")
    ap.add_argument("--samples", type=int, default=100, help="latency samples per round")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument(
        "--transfer", action="store_true", help="also measure the 1 GiB download (bench/transfer_bench.py)"
    )
    ap.add_argument("--transfer-mib", type=int, default=1024)
    ap.add_argument("--no-docs", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    ap.add_argument(
        "--profile",
        type=Path,
        help="write py-spy samples of the server during enqueue and drain to this folder "
        "(bench/profile_summary.py reads them)",
    )
    args = ap.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.rounds, args.jobs, args.samples = 1, 100, 10
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r} (choose from {', '.join(SYSTEMS)})")
    if any(s not in ("morag-pg", "morag-sqlite") for s in systems):
        ensure_peers_venv()
    run_dir = Path(tempfile.mkdtemp(prefix="morag-e2e-bench-"))
    procs = Procs()
    results: list[RoundResult] = []
    loads: list[float] = []
    started = time.monotonic()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    extra = ""
    try:
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            print(f"round {rnd + 1}/{args.rounds} ({', '.join(order)})", flush=True)
            for name in order:
                rdir = run_dir / f"r{rnd}-{name}"
                rdir.mkdir()
                system = make_system(name, procs, rdir)
                loads.append(os.getloadavg()[0])
                try:
                    results.append(run_one(system, args.jobs, args.samples, sys.stdout, args.profile))
                except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
                    print(f"  {name}: FAILED: {exc} (logs in {rdir})", flush=True)
                    args.keep = True
                finally:
                    system.stop()
                    system.drop()
                loads.append(os.getloadavg()[0])
        if args.transfer:
            from transfer_bench import run_transfer  # bench/ is on sys.path when run as a script

            extra = "\n" + run_transfer(procs, run_dir, args.transfer_mib, sys.stdout)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", flush=True)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"logs kept in {run_dir}")
    print(f"\nwhole run {time.monotonic() - started:.0f} s\n")
    body = docs_body(results, systems, args, loads or [os.getloadavg()[0]], extra)
    print(body)
    if not args.no_docs and results:
        DOC.write_text(rewrite_section(DOC.read_text(), body))
        print(f"\nrewrote the marked section of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
