"""Command line and environment, and proof that the worker never imports the server's libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.__main__ import OPTIONS, main, parse_config
from worker.config import env_name

ROOT = Path(__file__).resolve().parents[3]


def test_flags_parse_into_the_config() -> None:
    cmd, cfg = parse_config(
        [
            "--api-key",
            "K",
            "--server",
            "https://m.example",
            "--lanes",
            "gpu, cpu",
            "--content-types",
            "audio,video",
            "--concurrency",
            "3",
            "--once",
            "--log-format",
            "json",
            "--cookies",
            "/c.txt",
            "--grace",
            "5",
        ],
        env={},
    )
    assert cmd == "run" and cfg.api_key == "K" and cfg.server == "https://m.example"
    assert cfg.lanes == ["gpu", "cpu"] and cfg.content_types == ["audio", "video"]
    assert cfg.concurrency == 3 and cfg.once and cfg.log_format == "json"
    assert cfg.cookies == Path("/c.txt") and cfg.grace_s == 5.0


def test_every_flag_reads_its_environment_variable(tmp_path: Path) -> None:
    env = {
        "MORAG_WORKER_API_KEY": "EK",
        "MORAG_WORKER_SERVER": "http://s:1",
        "MORAG_WORKER_LANES": "cpu",
        "MORAG_WORKER_CONTENT_TYPES": "echo",
        "MORAG_WORKER_CONCURRENCY": "4",
        "MORAG_WORKER_NAME": "box",
        "MORAG_WORKER_TEMP_DIR": str(tmp_path),
        "MORAG_WORKER_DEVICE": "cpu",
        "MORAG_WORKER_WHISPER_MODEL": "small",
        "MORAG_WORKER_COOKIES_FROM_BROWSER": "firefox",
        "MORAG_WORKER_ONCE": "true",
        "MORAG_WORKER_LOG_FORMAT": "json",
        "MORAG_WORKER_GRACE": "7",
        "MORAG_WORKER_ALLOW_PRIVATE_URLS": "1",
        "MORAG_WORKER_SPOOL_DIR": str(tmp_path / "sp"),
    }
    _, cfg = parse_config([], env=env)
    assert (cfg.api_key, cfg.server, cfg.lanes, cfg.content_types) == ("EK", "http://s:1", ["cpu"], ["echo"])
    assert (cfg.concurrency, cfg.name, cfg.temp_dir, cfg.device) == (4, "box", tmp_path, "cpu")
    assert (cfg.whisper_model, cfg.cookies_from_browser, cfg.once, cfg.log_format) == (
        "small",
        "firefox",
        True,
        "json",
    )
    assert cfg.grace_s == 7.0 and cfg.allow_private_urls and cfg.spool == tmp_path / "sp"
    # a flag on the command line wins over the environment
    _, cfg = parse_config(["--concurrency", "1", "--server", "http://other"], env=env)
    assert cfg.concurrency == 1 and cfg.server == "http://other"


def test_every_option_names_its_variable_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--help"], env={})
    out = " ".join(capsys.readouterr().out.split())
    for flag, *_ in OPTIONS:
        assert env_name(flag) in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        ([], "--api-key is required"),
        (["--api-key", "K", "--log-format", "xml"], "--log-format"),
        (["--api-key", "K", "--device", "tpu"], "--device"),
        (["--api-key", "K", "--concurrency", "0"], "--concurrency"),
        (["--api-key", "K", "--prefetch", "-2"], "--prefetch must be"),
        (["--api-key", "K", "--prefetch-below", "0"], "--prefetch-below must be"),
        (["--api-key", "K", "--prefetch-wait", "-1"], "--prefetch-wait must be"),
        (["--api-key", "K", "--spool-after", "-1"], "--spool-after must be"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, env={})
    assert info.value.code == 2 and msg in capsys.readouterr().err


def test_check_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, cfg = parse_config(["check", "--api-key", "K", "--whisper-model", "tiny"], env={})
    assert cmd == "check" and cfg.whisper_model == "tiny"
    seen = []

    async def fake(config: object) -> int:
        seen.append(config)
        return 1

    import worker.check

    monkeypatch.setattr(worker.check, "run_checks", fake)
    assert main(["check", "--api-key", "K"]) == 1 and seen


def test_worker_imports_without_server_libraries() -> None:
    """`pip install .[worker]` has no fastapi/sqlalchemy/sqlmodel: the worker must not need them."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"fastapi", "sqlalchemy", "sqlmodel", "starlette", "uvicorn", "alembic", "api"}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Blocker())
        import worker.__main__, worker.runner, worker.client, worker.check, worker.executor, worker.cookies
        from worker.__main__ import parse_config
        parse_config(["--api-key", "K"], env={})
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_json_log_lines_carry_job_progress(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from worker.progress import JobProgress, setup_logging

    root = logging.getLogger("morag")
    saved = (root.handlers[:], root.level, root.propagate)
    setup_logging("json")
    progress = JobProgress("J1", "echo", min_interval_s=60)
    progress.download(500, 1000)
    progress.download(600, 1000)  # same phase within the interval: no new line
    progress.update("processing", 0.5, "halfway")
    root.handlers[:], root.level, root.propagate = saved
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(ln["phase"], ln["job_id"]) for ln in lines] == [("download", "J1"), ("processing", "J1")]
    assert lines[1]["progress"] == pytest.approx(0.525) and "halfway" in lines[1]["msg"]
    assert progress.snapshot() == (pytest.approx(0.525), "processing: halfway")


def test_a_bad_number_in_the_environment_is_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config([], env={"MORAG_WORKER_API_KEY": "K", "MORAG_WORKER_CONCURRENCY": "abc"})
    err = capsys.readouterr().err
    assert info.value.code == 2 and "MORAG_WORKER_CONCURRENCY='abc' is not a whole number" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        parse_config([], env={"MORAG_WORKER_API_KEY": "K", "MORAG_WORKER_ONCE": "maybe"})
    assert "MORAG_WORKER_ONCE='maybe' is not true or false" in capsys.readouterr().err


def test_version_and_help_name_the_check_command(capsys: pytest.CaptureFixture[str]) -> None:
    from worker import __version__

    with pytest.raises(SystemExit) as info:
        parse_config(["--version"], env={})
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_config(["--help"], env={})
    out = capsys.readouterr().out
    assert "[check]" in out and "check    validate the setup" in out


def test_an_unwritable_temp_dir_exits_2_with_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--api-key", "K", "--temp-dir", str(blocker / "sub")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "--temp-dir" in out.stderr and "not writable" in out.stderr and "Traceback" not in out.stderr


def test_prefetch_and_spool_settings_from_flags_and_environment() -> None:
    _, cfg = parse_config(["--api-key", "K", "--prefetch", "3", "--spool-after", "0"], env={})
    assert (cfg.prefetch, cfg.spool_after_s, cfg.prefetch_below_s) == (3, 0.0, 0.1)
    _, cfg = parse_config(["--api-key", "K"], env={"MORAG_WORKER_PREFETCH_BELOW": "2.5"})
    assert (cfg.prefetch, cfg.prefetch_below_s) == (-1, 2.5)
    assert cfg.give_back_after_s == 5.0  # --prefetch-wait's 1 s, raised to twice --prefetch-below
    _, cfg = parse_config(["--api-key", "K", "--prefetch-wait", "0"], env={})
    assert cfg.prefetch_wait_s == 0 and cfg.give_back_after_s is None
    _, cfg = parse_config(["--api-key", "K"], env={"MORAG_WORKER_PREFETCH_WAIT": "3"})
    assert cfg.give_back_after_s == 3.0


def test_the_worker_process_freezes_its_start_up_heap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``python -m worker`` asks its runner to freeze the heap once set up (gc.freeze: full
    collections then skip the start-up objects; worker CPU per job 0.43 -> 0.35 ms). Break caught:
    main running the runner without it."""
    from worker.runner import Runner

    seen: list[dict[str, object]] = []

    async def fake_run(self: Runner, **kw: object) -> int:
        seen.append(kw)
        return 0

    monkeypatch.setattr(Runner, "run", fake_run)
    assert main(["--api-key", "K", "--server", "http://127.0.0.1:9", "--temp-dir", str(tmp_path)]) == 0
    assert seen == [{"freeze_heap": True}]
