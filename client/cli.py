"""The ``morag`` command (also ``python -m client``): ingest, follow and search from a shell.

Exit codes (also in ``morag --help``):

    0  done: the request succeeded (with --wait: every task succeeded)
    1  a task failed, died or was canceled
    2  usage or authentication: bad arguments, no or wrong key, a request the server refused (4xx)
    3  the server could not be reached, failed (5xx), or --timeout passed
"""

from __future__ import annotations

import sys
from typing import TextIO

from client.api import MoragClient
from client.arguments import build_parser
from client.commands import EXIT_OK, EXIT_TASK_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, Cli, UsageError
from client.config import ConfigError, resolve
from client.errors import ApiError, AuthError, MoragClientError, TaskTimeout

__all__ = ["EXIT_OK", "EXIT_TASK_FAILED", "EXIT_UNAVAILABLE", "EXIT_USAGE", "main"]


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``morag`` command; its exit code (see the module docstring)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    try:
        config = resolve(args.server, args.api_key)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if not config.api_key:
        print(
            "error: no API key: pass --api-key, set MORAG_API_KEY or put api_key in "
            "~/.config/morag/config.toml",
            file=err,
        )
        return EXIT_USAGE
    try:
        with MoragClient(config.server, config.api_key) as client:
            return int(getattr(Cli(client, args, out, err), args.cmd)())
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except AuthError as exc:
        print(f"error: {exc.code}: {exc.message} (key from {config.source}); {exc.hint}", file=err)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"error: {exc.code}: {exc.message}; {exc.hint}", file=err)
        return EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_USAGE
    except TaskTimeout as exc:
        print(f"error: {exc}; follow it with `morag status {exc.task_id} --wait`", file=err)
        return EXIT_UNAVAILABLE
    except MoragClientError as exc:
        print(f"error: cannot reach the server: {exc}; check --server or MORAG_SERVER", file=err)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
