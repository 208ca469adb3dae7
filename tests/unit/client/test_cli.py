"""The ``morag`` command: configuration order, output, --json, --wait and exit codes (respx)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import respx

from client.cli import EXIT_OK, EXIT_TASK_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, main
from client.config import DEFAULT_SERVER, resolve
from tests.unit.client.test_api import _task

BASE = "http://srv.test"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MORAG_SERVER", "MORAG_API_KEY", "MORAG_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("client.commands.time.sleep", lambda s: None)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--server", BASE, "--api-key", "k", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_config_order_flag_env_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('server = "http://file:1"\napi_key = "from-file"\n')
    env = {"MORAG_CONFIG": str(cfg)}
    assert resolve(None, None, env).api_key == "from-file"
    assert resolve(None, None, env).server == "http://file:1"
    env |= {"MORAG_API_KEY": "from-env", "MORAG_SERVER": "http://env:2"}
    assert (resolve(None, None, env).api_key, resolve(None, None, env).server) == ("from-env", "http://env:2")
    flagged = resolve("http://flag:3", "from-flag", env)
    assert (flagged.api_key, flagged.server, flagged.source) == ("from-flag", "http://flag:3", "--api-key")
    assert resolve(None, None, {"MORAG_CONFIG": str(tmp_path / "none.toml")}).server == DEFAULT_SERVER


def test_xdg_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "xdg" / "morag" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('api_key = "k2"\n')
    assert resolve(None, None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).api_key == "k2"


def test_no_key_and_bad_config_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    assert main(["list"], out=io.StringIO(), err=err) == EXIT_USAGE
    assert "MORAG_API_KEY" in err.getvalue()
    bad = tmp_path / "bad.toml"
    bad.write_text("server = ")
    monkeypatch.setenv("MORAG_CONFIG", str(bad))
    err = io.StringIO()
    assert main(["list"], out=io.StringIO(), err=err) == EXIT_USAGE
    assert "cannot read" in err.getvalue()


def test_bad_usage_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"], out=io.StringIO(), err=io.StringIO())
    assert info.value.code == 2
    code, _, err = run("ingest", "/no/such/file.pdf")
    assert code == EXIT_USAGE and "no such file" in err
    code, _, err = run("ingest", "https://example.org", "--option", "novalue")
    assert code == EXIT_USAGE and "KEY=VALUE" in err


@respx.mock
def test_ingest_wait_shows_progress_prints_markdown_exit_0(tmp_path: Path) -> None:
    src = tmp_path / "a.md"
    src.write_text("# A")
    up = respx.post(f"{BASE}/api/v1/ingest/file").respond(202, json={"task_id": "t1", "status": "queued"})
    respx.get(f"{BASE}/api/v1/status/t1").side_effect = [
        httpx.Response(200, json=_task("queued", message="no online worker takes document")),
        httpx.Response(200, json=_task("running", 0.5, message="converting")),
        httpx.Response(200, json=_task("succeeded", 1.0, result={"markdown": "# A\n\nbody"})),
    ]
    code, out, err = run("ingest", str(src), "--option", "ocr=true", "--metadata", "team=x", "--wait")
    assert code == EXIT_OK
    assert out.strip() == "# A\n\nbody"
    lines = err.strip().splitlines()
    assert "queued" in lines[0] and "no online worker takes document" in lines[0]
    assert "[##########----------]  50% running" in lines[1] and "converting" in lines[1]
    assert "100% succeeded" in lines[2]
    body = up.calls.last.request.content.decode()
    assert 'name="options"\r\n\r\n{"ocr": true}' in body


@respx.mock
def test_failed_task_exits_1_with_error_class() -> None:
    respx.post(f"{BASE}/api/v1/ingest/url").respond(202, json={"task_id": "t1", "status": "queued"})
    respx.get(f"{BASE}/api/v1/status/t1").respond(
        200, json=_task("failed", error="not a PDF", error_class="bad_input")
    )
    code, out, _ = run("ingest", "https://example.org/x.pdf", "--wait")
    assert code == EXIT_TASK_FAILED
    assert "failed: [bad_input] not a PDF" in out


@respx.mock
def test_json_output_is_parseable() -> None:
    respx.post(f"{BASE}/api/v1/ingest/url").respond(202, json={"task_id": "t1", "status": "queued"})
    respx.get(f"{BASE}/api/v1/tasks").respond(200, json={"tasks": [_task()], "next_cursor": None})
    code, out, _ = run("--json", "ingest", "https://example.org/")
    assert code == 0 and json.loads(out) == [
        {"task_id": "t1", "status": "queued", "source": "https://example.org/"}
    ]
    code, out, _ = run("--json", "list", "--status", "queued")
    assert json.loads(out)["tasks"][0]["task_id"] == "t1"


@respx.mock
def test_server_errors_are_one_line_with_code_and_hint() -> None:
    respx.get(f"{BASE}/api/v1/status/zz").respond(
        404, json={"code": "task_not_found", "message": "no such task"}
    )
    respx.get(f"{BASE}/api/v1/workers").respond(403, json={"code": "wrong_scope", "message": "a worker key"})
    respx.post(f"{BASE}/api/v1/search").respond(503, json={"code": "index_unavailable", "message": "down"})
    respx.get(f"{BASE}/api/v1/documents").mock(side_effect=httpx.ConnectError("refused"))
    code, _, err = run("status", "zz")
    assert (code, err.count("\n")) == (EXIT_USAGE, 1)
    assert err.startswith("error: task_not_found: no such task;") and "morag list" in err
    code, _, err = run("workers")
    assert code == EXIT_USAGE and "wrong_scope" in err and "--api-key" in err
    code, _, err = run("search", "q")
    assert code == EXIT_UNAVAILABLE and "index_unavailable" in err
    code, _, err = run("documents")
    assert code == EXIT_UNAVAILABLE and "cannot reach the server" in err


@respx.mock
def test_search_prints_hits_with_page_and_time_range() -> None:
    respx.post(f"{BASE}/api/v1/search").respond(
        200,
        json={
            "query": "bees",
            "results": [
                {
                    "text": "Honey  bees\ndance",
                    "score": 0.81,
                    "document_id": "d1",
                    "chunk_index": 2,
                    "source": "notes.pdf",
                    "location": {"page": 3},
                    "metadata": {},
                },
                {
                    "text": "talk",
                    "score": 0.5,
                    "document_id": "d2",
                    "chunk_index": 0,
                    "source": None,
                    "location": {"start": 65.0, "end": 130.5},
                    "metadata": {},
                },
            ],
        },
    )
    code, out, _ = run("search", "bees", "--limit", "2")
    assert code == 0
    assert "1. 0.810  d1 #2  page 3" in out and "Honey bees dance" in out
    assert "1:05-2:10" in out


@respx.mock
def test_cancel_retry_documents_workers_cookies(tmp_path: Path) -> None:
    respx.delete(f"{BASE}/api/v1/ingest/t1").respond(200, json={"task_id": "t1", "status": "canceled"})
    respx.post(f"{BASE}/api/v1/tasks/t1/retry").respond(202, json={"task_id": "t1", "status": "queued"})
    respx.get(f"{BASE}/api/v1/documents").respond(
        200,
        json={
            "documents": [{"document_id": "q3", "chunks": 12, "source": "q3.pdf", "content_type": "document"}]
        },
    )
    respx.get(f"{BASE}/api/v1/workers").respond(200, json={"workers": []})
    put = respx.put(f"{BASE}/api/v1/cookies").respond(
        200,
        json={
            "domains": [{"domain": "youtube.com", "count": 2, "updated_at": "2026-12-01T10:00:00Z"}],
            "total": 2,
        },
    )
    assert run("cancel", "t1")[1].strip() == "t1 canceled"
    assert run("retry", "t1")[1].strip() == "t1 queued again"
    assert "q3   12 chunks  document  q3.pdf" in run("documents")[1]
    assert "no workers" in run("workers")[1]
    jar = tmp_path / "cookies.txt"
    jar.write_text("# Netscape HTTP Cookie File\n")
    code, out, _ = run("cookies", "set", str(jar))
    assert code == 0 and "youtube.com  2 cookies" in out
    assert put.calls.last.request.content == jar.read_bytes()


@respx.mock
def test_global_options_work_after_the_command_too() -> None:
    route = respx.get("http://other.test/api/v1/tasks").respond(200, json={"tasks": [], "next_cursor": None})
    out, err = io.StringIO(), io.StringIO()
    code = main(["list", "--json", "--server", "http://other.test", "--api-key", "k9"], out=out, err=err)
    assert code == 0 and json.loads(out.getvalue()) == {"tasks": [], "next_cursor": None}
    assert route.calls.last.request.headers["authorization"] == "Bearer k9"


def test_progress_redraws_in_place_on_a_terminal() -> None:
    from client.models import Task
    from client.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    progress = Progress(out, {"t1": "a.mp3", "t2": "b.pdf"})
    progress.update(Task.model_validate(_task("running", 0.25)))
    progress.update(Task.model_validate({**_task("queued"), "task_id": "t2"}))
    progress.update(Task.model_validate(_task("running", 0.5)))
    text = out.getvalue()
    assert text.count("\x1b[2F") == 1 and text.count("\x1b[1F") == 1  # back over the lines drawn
    assert text.rstrip().endswith("queued    process b.pdf")
    assert " 50% running   process a.mp3" in text.split("\x1b[2F")[-1]


@respx.mock
def test_status_list_queues_and_workers_print_one_line_per_thing() -> None:
    """The text each command prints (``client/output.py``), beside the commands that call it."""
    failed = _task("failed", 0.5, error="boom", error_class="bad_input", finished_at="2026-12-01T10:01:00Z")
    respx.get(f"{BASE}/api/v1/status/t1").respond(200, json=failed)
    respx.get(f"{BASE}/api/v1/tasks").respond(200, json={"tasks": [failed], "next_cursor": None})
    respx.get(f"{BASE}/api/v1/status/stats/queues").respond(
        200, json={"lanes": [{"lane": "cpu-tasks-1", "queued": 2, "running": 1, "oldest_queued_age_s": 42.4}]}
    )
    respx.get(f"{BASE}/api/v1/workers").respond(
        200,
        json={
            "workers": [
                {
                    "worker_id": "w1",
                    "name": "box",
                    "lanes": ["cpu"],
                    "online": True,
                    "device": "CPU x4",
                    "last_seen_at": "2026-12-01T10:02:00Z",
                    "current_jobs": ["t1"],
                }
            ]
        },
    )
    code, out, _ = run("status", "t1")
    assert code == 0
    assert out.splitlines()[:4] == ["task      t1", "status    failed", "stage     process", "progress  50%"]
    assert (
        "attempts  1/3" in out
        and "finished  2026-12-01 10:01:00" in out
        and "error     [bad_input] boom" in out
    )
    assert run("list")[1].strip() == "t1  failed     50%  document 2026-12-01 10:00:00  boom"
    assert run("queues")[1].strip() == "cpu-tasks-1  queued=2 running=1 oldest=42s workers_online=0"
    assert run("workers")[1].strip() == (
        "box  online   CPU x4  lanes=cpu  types=all  last seen 2026-12-01 10:02:00  t1"
    )
