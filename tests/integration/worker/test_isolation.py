"""A real server and a real worker process: canceled work stops using CPU, a crash is one job's fate.

The worker runs each slot's jobs in a child process (``--isolation process``, the default). The
echo processor's test hooks (``spin_s``, ``crash``) are enabled by MORAG_WORKER_TEST_HOOKS=1.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import LiveServerFactory
from tests.integration.test_worker_e2e import Workers, processed, running_on, status, submit, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workers:
    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    w = Workers(tmp_path)
    yield w  # type: ignore[misc]
    w.stop_all()


def busy_child(worker_pid: int) -> psutil.Process:
    """The worker's processing child that is burning CPU now."""
    for child in psutil.Process(worker_pid).children():
        if child.cpu_percent(interval=0.3) > 20:
            return child
    raise AssertionError("no busy processing child")


def test_cancel_stops_the_work_within_2_s(live_server: LiveServerFactory, workers: Workers) -> None:
    server = live_server(env={"MORAG_LEASE_S": "3"})  # heartbeats every second
    wa = workers.start(server, "wa")
    task = submit(server, "burns CPU", spin_s=120)
    wait_for(lambda: running_on(server, task, "wa", 0.0), 30, "the job to run")
    child = wait_for(lambda: _try_busy(wa.pid), 20, "the child to burn CPU")
    assert server.api("DELETE", f"/ingest/{task}").status_code == 200
    canceled = time.monotonic()
    heartbeat = 3 / 3
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() - canceled > heartbeat + 5:
            break
        time.sleep(0.05)
    took = time.monotonic() - canceled
    print(f"\ncancel -> canceled work's process gone: {took:.2f} s (heartbeat every {heartbeat:g} s)")
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert took < heartbeat + 2.0
    assert wa.poll() is None  # the worker goes on
    follow = submit(server, "next one")
    st = wait_for(lambda: (s := status(server, follow)) and processed(s) and s, 30, "the next job")
    assert "next one" in st["result"]["markdown"]


def _try_busy(pid: int) -> psutil.Process | None:
    try:
        return busy_child(pid)
    except AssertionError:
        return None


def test_a_segfault_fails_only_its_job(live_server: LiveServerFactory, workers: Workers) -> None:
    server = live_server(env={"MORAG_MAX_ATTEMPTS": "1"})
    wa = workers.start(server, "wa")
    crash = submit(server, "dies", crash="segfault")
    st = wait_for(
        lambda: (s := status(server, crash)) and s["status"] in ("failed", "dead") and s, 40, "failure"
    )
    assert "crashed (SIGSEGV)" in str(st), st
    after = submit(server, "still serving")
    st = wait_for(lambda: (s := status(server, after)) and processed(s) and s, 30, "the next job")
    assert "still serving" in st["result"]["markdown"] and wa.poll() is None
    assert "crashed (SIGSEGV)" in workers.log("wa")
