"""Command line: ``python -m worker [check] --api-key KEY --server URL [options]``.

Every option also reads an environment variable ``MORAG_WORKER_<OPTION>`` (``--temp-dir`` ->
``MORAG_WORKER_TEMP_DIR``); a flag on the command line wins over the environment. Defaults come
from ``worker.config.WorkerConfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker import __version__
from worker.config import WorkerConfig, default_of, env_name, parse_bool, split_list

# (flag, type, help); type "bool" is a switch, "list" a comma-separated list.
OPTIONS: list[tuple[str, Any, str]] = [
    ("--api-key", str, "worker API key (python -m api keys create --scope worker)"),
    ("--server", str, "server base URL"),
    ("--lanes", "list", "lanes to serve: gpu,cpu (default: gpu with a CUDA device, else cpu)"),
    ("--content-types", "list", "content types to take (default: every installed processor)"),
    ("--concurrency", int, "jobs processed at the same time"),
    ("--name", str, "a name shown in the server's worker list (default: host name)"),
    ("--temp-dir", Path, "where job files live while they run (removed after each job)"),
    ("--spool-dir", Path, "where undelivered results wait for the server (default: TEMP_DIR/spool)"),
    ("--device", str, "auto | cuda | cpu"),
    ("--whisper-model", str, "Whisper model name (hub) or a local CTranslate2 directory"),
    ("--docling-artifacts", Path, "local copy of docling's layout models (PDF headings/tables offline)"),
    ("--cookies", Path, "Netscape cookies.txt for media sites"),
    ("--cookies-from-browser", str, "read cookies from a local browser: chrome, firefox, edge, ..."),
    ("--allow-private-urls", "bool", "let URL jobs reach loopback/private addresses"),
    ("--max-download-mb", float, "the most a URL job may download, in MB"),
    ("--fetch-timeout", float, "network timeout of URL jobs in seconds"),
    ("--ffmpeg-timeout", float, "the longest one ffmpeg/ffprobe call may run, in seconds"),
    ("--isolation", str, "process (jobs run in child processes the worker can stop) | thread"),
    ("--kill-after", float, "seconds a stopped job's process gets after SIGTERM before SIGKILL"),
    (
        "--spool-after",
        float,
        "results of jobs that ran at least this many seconds are written to the spool before they "
        "are sent (quicker ones only when the server cannot be reached: a lost one is simply rerun)",
    ),
    (
        "--prefetch",
        int,
        "jobs leased ahead of the free slots while the recent jobs are short (-1: as many as the "
        "slots start within --prefetch-below, 1 to 8 per slot; 0: off); each claim then carries "
        "more results and leases more jobs",
    ),
    (
        "--prefetch-below",
        float,
        "prefetch only while the recent jobs ran shorter than this, in seconds (also about the "
        "longest a prefetched job can wait for a slot)",
    ),
    (
        "--prefetch-wait",
        float,
        "a prefetched job that waited this many seconds for a slot (at least twice --prefetch-below) "
        "goes back to the queue, not counted as an attempt, so jobs leased ahead do not sit behind "
        "one that turned out long while another worker could run them; 0: never",
    ),
    (
        "--standby",
        int,
        "1: while every slot and prefetched place is taken, keep one standby claim open, which "
        "the server answers only with a new job no idle worker could take (another user's job "
        "then starts in this worker's next free slot, not after its next batch); 0: off",
    ),
    (
        "--pipeline",
        int,
        "jobs handed to a busy slot's child behind the one it runs, while the recent jobs ran "
        "shorter than --pipeline-below (it then starts the next one without a round trip to the "
        "worker; 0: off; process isolation only)",
    ),
    (
        "--pipeline-below",
        float,
        "pipeline only while the recent jobs ran shorter than this, in seconds (also about the "
        "longest a job handed to a busy slot waits for it)",
    ),
    ("--once", "bool", "process one job and exit (exit 0 when it succeeded)"),
    ("--log-format", str, "text | json"),
    ("--grace", float, "seconds running jobs get to finish on SIGINT/SIGTERM before being given back"),
    ("--claim-wait", float, "long-poll length of a claim in seconds"),
    ("--retry-base", float, "first retry delay for server requests in seconds (doubles, jittered)"),
    ("--retry-cap", float, "longest retry delay in seconds"),
    ("--min-free-gb", float, "free space `check` wants in the temp dir"),
]
_DEST = {
    "--grace": "grace_s",
    "--claim-wait": "claim_wait_s",
    "--retry-base": "retry_base_s",
    "--retry-cap": "retry_cap_s",
    "--fetch-timeout": "fetch_timeout_s",
    "--ffmpeg-timeout": "ffmpeg_timeout_s",
    "--kill-after": "kill_after_s",
    "--spool-after": "spool_after_s",
    "--prefetch-below": "prefetch_below_s",
    "--prefetch-wait": "prefetch_wait_s",
    "--pipeline-below": "pipeline_below_s",
}
_CHOICES = {
    "--log-format": ("text", "json"),
    "--device": ("auto", "cuda", "cpu"),
    "--isolation": ("process", "thread"),
}
_TYPE_WORDS = {int: "a whole number", float: "a number", Path: "a path", str: "text"}
USAGE = "python -m worker [check] --api-key KEY --server URL [options]"
EPILOG = """commands:
  (none)   claim and process jobs until stopped (SIGINT/SIGTERM)
  check    validate the setup (server, key, lanes, GPU, processors per content type, temp dir,
           cookies), print a fix for each problem, exit 0 only when nothing failed

Every option also reads MORAG_WORKER_<OPTION> from the environment. See docs/worker-setup.md."""


def dest_of(flag: str) -> str:
    return _DEST.get(flag, flag.lstrip("-").replace("-", "_"))


def _converter(kind: Any) -> Callable[[str], Any]:
    if kind == "list":
        return split_list
    if kind == "bool":
        return parse_bool
    return kind  # type: ignore[no-any-return]


def build_parser(prog: str, env: Mapping[str, str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser for the worker or for ``check`` (defaults from the environment), and the
    environment variables that could not be read (each a message)."""
    p = argparse.ArgumentParser(
        prog=prog,
        usage=USAGE,
        description="morag-remote worker: claims jobs from a morag-remote server and processes them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"morag-remote worker {__version__}")
    env_errors: list[str] = []
    for flag, kind, help_text in OPTIONS:
        var = env_name(flag)
        raw = env.get(var)
        dest = dest_of(flag)
        default = default_of(dest)
        if raw not in (None, ""):
            try:
                default = _converter(kind)(raw)
            except (TypeError, ValueError) as exc:
                word = "true or false" if kind == "bool" else _TYPE_WORDS.get(kind, "a value")
                env_errors.append(f"{var}={raw!r} is not {word} ({exc})")
        if kind == "bool":
            p.add_argument(flag, dest=dest, action="store_true", default=default, help=f"{help_text} [{var}]")
            continue
        shown = f" (default {default})" if default not in (None, "") and flag != "--api-key" else ""
        p.add_argument(
            flag,
            dest=dest,
            type=_converter(kind),
            default=default,
            choices=_CHOICES.get(flag),
            help=f"{help_text}{shown} [{var}]",
        )
    return p, env_errors


def parse_config(argv: list[str], env: Mapping[str, str] | None = None) -> tuple[str, WorkerConfig]:
    """(command, settings) from the command line and the environment."""
    env = os.environ if env is None else env
    cmd = "run"
    if argv and argv[0] == "check":
        cmd, argv = "check", argv[1:]
    parser, env_errors = build_parser("python -m worker" + (" check" if cmd == "check" else ""), env)
    args = vars(parser.parse_args(argv))
    if env_errors:
        parser.error("; ".join(env_errors))
    if not args.get("api_key"):
        parser.error(f"--api-key is required (or set {env_name('--api-key')})")
    if args["log_format"] not in _CHOICES["--log-format"]:
        parser.error("--log-format must be text or json")
    if args["device"] not in _CHOICES["--device"]:
        parser.error("--device must be auto, cuda or cpu")
    if args["isolation"] not in _CHOICES["--isolation"]:
        parser.error("--isolation must be process or thread")
    _check_numbers(parser, args)
    for key in ("name", "temp_dir"):
        if args[key] is None:
            args.pop(key)
    return cmd, WorkerConfig(**args)


def _check_numbers(parser: argparse.ArgumentParser, args: dict[str, Any]) -> None:
    """Each numeric option within its range (``parser.error`` names the first that is not)."""
    if args["concurrency"] < 1:
        parser.error("--concurrency must be at least 1")
    for flag in ("--max-download-mb", "--fetch-timeout", "--ffmpeg-timeout", "--kill-after"):
        if args[dest_of(flag)] <= 0:
            parser.error(f"{flag} must be more than 0")
    if args["spool_after_s"] < 0:
        parser.error("--spool-after must be 0 or more")
    if args["prefetch"] < -1:
        parser.error("--prefetch must be -1 (as many as --concurrency), 0 (off) or more")
    if args["standby"] not in (0, 1):
        parser.error("--standby must be 0 (off) or 1")
    if args["prefetch_below_s"] <= 0:
        parser.error("--prefetch-below must be more than 0")
    if args["prefetch_wait_s"] < 0:
        parser.error("--prefetch-wait must be 0 (never) or more")


def writable_problem(path: Path) -> str | None:
    """None when files can be written under ``path`` (created if needed), else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path) as fh:
            fh.write(b"ok")
    except OSError as exc:
        return f"{path} is not writable: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m worker``."""
    cmd, config = parse_config(sys.argv[1:] if argv is None else argv)
    from worker.progress import setup_logging

    setup_logging(config.log_format)
    if cmd == "check":
        from worker.check import run_checks

        return asyncio.run(run_checks(config))
    for what, path in (("--temp-dir", config.temp_dir), ("--spool-dir", config.spool)):
        problem = writable_problem(path)
        if problem:
            print(
                f"python -m worker: error: {what}: {problem}; choose a writable directory "
                f"({what} DIR or {env_name(what)})",
                file=sys.stderr,
            )
            return 2
    from worker.runner import Runner

    return asyncio.run(Runner(config).run(freeze_heap=True))


if __name__ == "__main__":
    sys.exit(main())
