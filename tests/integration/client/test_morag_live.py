"""The ``morag`` command and the Python client against a real server and a real echo worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import ApiError, MoragClient
from tests.integration.conftest import ROOT, LiveServer, LiveServerFactory


@pytest.fixture
def served(live_server: LiveServerFactory, tmp_path: Path) -> Iterator[LiveServer]:
    server = live_server()
    worker = server.start_worker(
        tmp_path / "worker.log",
        "--content-types",
        "echo",
        "--lanes",
        "cpu",
        "--claim-wait",
        "1",
        "--temp-dir",
        str(tmp_path / "w"),
    )
    yield server
    worker.kill()
    worker.wait(10)


def morag(server: LiveServer, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORAG_")}
    env |= {
        "MORAG_SERVER": server.url,
        "MORAG_API_KEY": key or server.client_key,
        "MORAG_CONFIG": "/nonexistent",
    }
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ingest_wait_search_documents_and_exit_codes(served: LiveServer, tmp_path: Path) -> None:
    note = tmp_path / "bees.txt"
    note.write_text("Honey bees visit about two thousand flowers a day and dance to share where.")
    done = morag(served, "ingest", str(note), "--content-type", "echo", "--document-id", "bees", "--wait")
    assert done.returncode == 0, done.stderr
    assert "Honey bees visit" in done.stdout and "100% succeeded" in done.stderr
    found = morag(served, "--json", "search", "how many flowers do bees visit", "--limit", "1")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["document_id"] == "bees"
    docs = morag(served, "documents")
    assert "bees" in docs.stdout and "bees.txt" in docs.stdout
    bad = morag(served, "ingest", str(note), "--content-type", "echo", "--option", "sleep_s=oops", "--wait")
    assert bad.returncode == 1 and "bad_input" in bad.stdout
    denied = morag(served, "list", key="mrg_wrong")
    assert denied.returncode == 2 and denied.stderr.startswith("error: unauthorized")
    unknown = morag(served, "status", "0" * 32)
    assert unknown.returncode == 2 and "task_not_found" in unknown.stderr
    assert morag(served, "workers").stdout.count("online") == 1


def test_python_client_retry_and_cancel(served: LiveServer, tmp_path: Path) -> None:
    note = tmp_path / "n.txt"
    note.write_text("retry me")
    with MoragClient(served.url, served.client_key) as c:
        failed = c.wait(
            c.ingest_file(note, content_type="echo", options={"sleep_s": "x"}).task_id, timeout=60
        )
        assert failed.status == "failed" and failed.error_class == "bad_input"
        assert c.retry(failed.task_id).status == "queued"
        assert c.wait(failed.task_id, timeout=60).status == "failed"  # same input, same verdict
        slow = c.ingest_file(note, content_type="echo", options={"sleep_s": 30})
        assert c.cancel(slow.task_id).status == "canceled"
        with pytest.raises(ApiError) as info:
            c.cancel(slow.task_id)
        assert info.value.code == "task_finished"
        assert {t.task_id for t in c.list_tasks("canceled").tasks} == {slow.task_id}
