"""Command line: ``python -m worker [check] --api-key KEY --server URL [options]``.

Every option also reads an environment variable ``MORAG_WORKER_<OPTION>`` (``--temp-dir`` ->
``MORAG_WORKER_TEMP_DIR``); a flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.config import WorkerConfig, env_bool, env_name, split_list

# (flag, type, default, help); type "bool" is a switch, "list" a comma-separated list.
OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("--api-key", str, None, "worker API key (python -m api keys create --scope worker)"),
    ("--server", str, "http://127.0.0.1:8000", "server base URL"),
    ("--lanes", "list", None, "lanes to serve: gpu,cpu (default: gpu with a CUDA device, else cpu)"),
    ("--content-types", "list", None, "content types to take (default: every installed processor)"),
    ("--concurrency", int, 1, "jobs processed at the same time"),
    ("--name", str, None, "a name shown in the server's worker list (default: host name)"),
    ("--temp-dir", Path, None, "where job files live while they run (removed after each job)"),
    ("--spool-dir", Path, None, "where undelivered results wait for the server (default: TEMP_DIR/spool)"),
    ("--device", str, "auto", "auto | cuda | cpu"),
    ("--whisper-model", str, "base", "Whisper model name (hub) or a local CTranslate2 directory"),
    ("--cookies", Path, None, "Netscape cookies.txt for media sites"),
    ("--cookies-from-browser", str, None, "read cookies from a local browser: chrome, firefox, edge, ..."),
    ("--allow-private-urls", "bool", False, "let URL jobs reach loopback/private addresses"),
    ("--once", "bool", False, "process one job and exit (exit 0 when it succeeded)"),
    ("--log-format", str, "text", "text | json"),
    ("--grace", float, 30.0, "seconds running jobs get to finish on SIGINT/SIGTERM before being given back"),
    ("--claim-wait", float, 20.0, "long-poll length of a claim in seconds"),
    ("--retry-base", float, 1.0, "first retry delay for server requests in seconds (doubles, jittered)"),
    ("--retry-cap", float, 30.0, "longest retry delay in seconds"),
    ("--min-free-gb", float, 2.0, "free space `check` wants in the temp dir"),
]
_DEST = {
    "--grace": "grace_s",
    "--claim-wait": "claim_wait_s",
    "--retry-base": "retry_base_s",
    "--retry-cap": "retry_cap_s",
    "--cookies": "cookies",
    "--spool-dir": "spool_dir",
}


def build_parser(prog: str, env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser for the worker or for ``check``; defaults come from the environment."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="morag-remote worker",
        epilog="Every option also reads MORAG_WORKER_<OPTION> from the environment.",
    )
    for flag, kind, default, help_text in OPTIONS:
        var = env_name(flag)
        raw = env.get(var)
        dest = _DEST.get(flag, flag.lstrip("-").replace("-", "_"))
        if kind == "bool":
            p.add_argument(
                flag,
                dest=dest,
                action="store_true",
                default=env_bool(raw) if raw else default,
                help=f"{help_text} [{var}]",
            )
            continue
        conv = split_list if kind == "list" else kind
        value = conv(raw) if raw not in (None, "") else default
        p.add_argument(flag, dest=dest, type=conv, default=value, help=f"{help_text} [{var}]")
    return p


def parse_config(argv: list[str], env: Mapping[str, str] | None = None) -> tuple[str, WorkerConfig]:
    """(command, settings) from the command line and the environment."""
    env = os.environ if env is None else env
    cmd = "run"
    if argv and argv[0] == "check":
        cmd, argv = "check", argv[1:]
    parser = build_parser("python -m worker" + (" check" if cmd == "check" else ""), env)
    args = vars(parser.parse_args(argv))
    if not args.get("api_key"):
        parser.error(f"--api-key is required (or set {env_name('--api-key')})")
    if args["log_format"] not in ("text", "json"):
        parser.error("--log-format must be text or json")
    if args["device"] not in ("auto", "cuda", "cpu"):
        parser.error("--device must be auto, cuda or cpu")
    if args["concurrency"] < 1:
        parser.error("--concurrency must be at least 1")
    if args["name"] is None:
        args.pop("name")
    if args["temp_dir"] is None:
        args.pop("temp_dir")
    return cmd, WorkerConfig(**args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m worker``."""
    cmd, config = parse_config(sys.argv[1:] if argv is None else argv)
    from worker.progress import setup_logging

    setup_logging(config.log_format)
    if cmd == "check":
        from worker.check import run_checks

        return asyncio.run(run_checks(config))
    from worker.runner import Runner

    return asyncio.run(Runner(config).run())


if __name__ == "__main__":
    sys.exit(main())
