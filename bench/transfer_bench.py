"""A signed download of a large file: the server vs `python -m http.server`, same file, same client.

    .venv/bin/python bench/transfer_bench.py [--mib 1024] [--repeats 3]
    (or `bench/e2e_bench.py --transfer`)

Starts `python -m api serve` (SQLite, fresh data directory, keys made with the CLI), uploads a file
of MIB MiB with curl to `POST /process/file?wait_s=0` (an `echo` job, no worker running), claims the
job over HTTP with the worker key to get its signed `download_url`, then downloads it with curl
(`-o /dev/null`) REPEATS times, alternating with `python -m http.server` serving the very file the
server stored. Per download: MB/s (curl's `speed_download`, 10^6 bytes), the serving process's CPU
(utime+stime from /proc) and its peak RSS. Also checks that a Range request answers 206 with the
right bytes. Prints a markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_bench import ROOT, CpuMeter, Procs, free_port, machine, tree, wait_until


def _cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "api", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if r.returncode:
        raise RuntimeError(f"python -m api {' '.join(args)}: {r.stderr[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


def _curl(url: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{json}", *extra, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return dict(json.loads(out))


def _timed(pid: int, url: str, *extra: str) -> dict[str, float]:
    meter = CpuMeter({"srv": lambda: tree(pid)}, rss_group="srv").start()
    r = _curl(url, *extra)
    cpu = meter.stop()["srv"]
    if int(r["http_code"]) != 200:
        raise RuntimeError(f"download answered {r['http_code']}")
    return {
        "mb_s": float(r["speed_download"]) / 1e6,
        "s": float(r["time_total"]),
        "bytes": float(r["size_download"]),
        "cpu_s": cpu,
        "rss_mb": meter.rss_peak,
    }


def run_transfer(
    procs: Procs, run_dir: Path, mib: int, log: Any, repeats: int = 3, chunk_bytes: int | None = None
) -> str:
    data = run_dir / "transfer"
    data.mkdir(parents=True, exist_ok=True)
    src = data / "big.bin"
    block = os.urandom(4 * 1024 * 1024)
    with src.open("wb") as f:
        for _ in range(mib // 4):
            f.write(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
    env.update(MORAG_DATA_DIR=str(data / "server"), MORAG_SECRET_KEY="bench-secret", PYTHONUNBUFFERED="1")
    if chunk_bytes:
        env["MORAG_DOWNLOAD_CHUNK_BYTES"] = str(chunk_bytes)
    _cli(env, "users", "create", "bench")
    worker_key = _cli(env, "keys", "create", "--user", "bench", "--scope", "worker")
    client_key = _cli(env, "keys", "create", "--user", "bench", "--scope", "client")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = procs.start(
        [
            sys.executable,
            "-m",
            "api",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        data / "server.log",
        env,
    )
    peer: subprocess.Popen[bytes] | None = None
    try:
        import httpx

        with httpx.Client(base_url=base, timeout=60) as client:

            def healthy() -> bool:
                try:
                    return client.get("/health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, 60, "the server's /health", step=0.1)
            up = _curl(
                f"{base}/process/file?wait_s=0",
                "-H",
                f"Authorization: Bearer {client_key}",
                "-F",
                f"file=@{src};type=application/octet-stream",
                "-F",
                "content_type=echo",
            )
            if int(up["http_code"]) != 202:
                raise RuntimeError(f"upload answered {up['http_code']}")
            claim = client.post(
                "/worker/claim",
                headers={"Authorization": f"Bearer {worker_key}"},
                json={
                    "worker_id": "bench-transfer",
                    "lanes": ["cpu"],
                    "content_types": ["echo"],
                    "wait_s": 5,
                },
            )
            job = claim.json()["jobs"][0]
        url = job["download_url"]
        url = url if url.startswith("http") else base + url
        auth = ("-H", f"Authorization: Bearer {worker_key}")
        stored = next(
            p for p in (data / "server").rglob("*") if p.is_file() and p.stat().st_size == src.stat().st_size
        )
        # The Range check: 206 and the right bytes, across a 4 MiB boundary.
        start, end = 4 * 1024 * 1024 - 10, 4 * 1024 * 1024 + 9
        part = subprocess.run(
            ["curl", "-sS", "-r", f"{start}-{end}", "-w", "\n%{http_code}", *auth, url],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        body, code = part.rsplit(b"\n", 1)
        range_ok = code == b"206" and body == src.read_bytes()[start : end + 1]
        pport = free_port()
        peer = procs.start(
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                str(pport),
                "--directory",
                str(stored.parent),
            ],
            data / "http-server.log",
            env,
        )
        wait_until(lambda: _port_open(pport), 30, "http.server", step=0.1)
        purl = f"http://127.0.0.1:{pport}/{stored.name}"
        ours, theirs = [], []
        for i in range(repeats):
            for name, target in (
                (("server", "ours"), ("http.server", "theirs"))
                if i % 2 == 0
                else (
                    ("http.server", "theirs"),
                    ("server", "ours"),
                )
            ):
                m = _timed(server.pid, url, *auth) if target == "ours" else _timed(peer.pid, purl)
                (ours if target == "ours" else theirs).append(m)
                print(
                    f"  download {name}: {m['mb_s']:.0f} MB/s, {m['cpu_s']:.2f} s CPU, "
                    f"RSS {m['rss_mb']:.0f} MB",
                    file=log,
                    flush=True,
                )
    finally:
        procs.stop([p for p in (server, peer) if p is not None])
        shutil.rmtree(data, ignore_errors=True)

    def med(ms: list[dict[str, float]], k: str) -> float:
        return statistics.median(m[k] for m in ms)

    def rng(ms: list[dict[str, float]], k: str, d: int = 0) -> str:
        vals = [m[k] for m in ms]
        return f"{statistics.median(vals):,.{d}f} ({min(vals):,.{d}f}-{max(vals):,.{d}f})"

    range_note = "206 with the right bytes" if range_ok else "**WRONG ANSWER**"
    return f"""
### Transfer: {mib:,} MiB signed download

`bench/transfer_bench.py` (`bench/e2e_bench.py --transfer`): {mib:,} MiB uploaded with curl, the job
claimed over HTTP, then the signed `download_url` fetched with `curl -o /dev/null` {repeats} times,
alternating with `python -m http.server` serving the very file the server stored (same client, same
page cache). CPU and peak RSS of the serving process from /proc. {machine()}; load average
{os.getloadavg()[0]:.1f} at the end. Range request across a 4 MiB boundary: {range_note}.

| | server (`GET /files/...`, uvicorn) | `python -m http.server` |
|---|---|---|
| MB/s, median (min-max) | {rng(ours, "mb_s")} | {rng(theirs, "mb_s")} |
| server CPU per download, s | {rng(ours, "cpu_s", 2)} | {rng(theirs, "cpu_s", 2)} |
| peak RSS, MB | {rng(ours, "rss_mb")} | {rng(theirs, "rss_mb")} |
| server vs http.server | **{med(ours, "mb_s") / med(theirs, "mb_s"):.2f}x** | 1.00x |
"""


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-bytes", type=int, help="MORAG_DOWNLOAD_CHUNK_BYTES for the server")
    args = ap.parse_args()
    procs = Procs()
    run_dir = Path(tempfile.mkdtemp(prefix="morag-transfer-bench-"))
    try:
        print(run_transfer(procs, run_dir, args.mib, sys.stdout, args.repeats, args.chunk_bytes))
    finally:
        procs.stop_all()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    rc = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(rc)
