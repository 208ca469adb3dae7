"""The ``morag`` command's arguments: every command, its options, and the global ones."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

STATES = ["queued", "running", "succeeded", "failed", "canceled", "dead"]
CONTENT_TYPES = ["audio", "video", "youtube", "document", "web", "image", "echo"]
EPILOG = """exit codes: 0 done; 1 a task failed, died or was canceled; 2 usage or authentication
(bad arguments, missing or wrong key, request refused); 3 server unreachable, server error or
--timeout passed.

server and key: --server/--api-key, else MORAG_SERVER/MORAG_API_KEY, else
~/.config/morag/config.toml (server = "...", api_key = "...")."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``morag``: global options before or after the command's name."""
    p = argparse.ArgumentParser(
        prog="morag",
        description="Client for a morag-remote server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def globals_(parser: argparse.ArgumentParser, default: object) -> None:
        """The options every command takes, before or after its name."""
        parser.add_argument(
            "--server", default=default, help="server URL (MORAG_SERVER; default http://127.0.0.1:8000)"
        )
        parser.add_argument("--api-key", default=default, help="client API key (MORAG_API_KEY)")
        parser.add_argument(
            "--json", action="store_true", default=default or False, help="print JSON answers (for scripts)"
        )
        parser.add_argument(
            "--timeout", type=float, default=default, help="give up waiting after this many seconds"
        )

    globals_(p, None)
    common = argparse.ArgumentParser(add_help=False)
    globals_(common, argparse.SUPPRESS)  # given after the command: override, else keep the main parser's
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    def input_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--content-type", choices=CONTENT_TYPES, help="default: detected by the server")
        sp.add_argument("--option", action="append", metavar="K=V", help="processor option (repeatable)")

    ing = sub.add_parser("ingest", help="process and index files or URLs (a task each)")
    ing.add_argument("sources", nargs="+", metavar="PATH|URL")
    input_options(ing)
    ing.add_argument("--metadata", action="append", metavar="K=V", help="stored with every chunk")
    ing.add_argument("--document-id", help="name of the document (one source only)")
    ing.add_argument("--replace", action="store_true", help="replace the chunks of the same document id")
    ing.add_argument("--lane", choices=["gpu", "cpu"])
    ing.add_argument("--priority", type=int)
    ing.add_argument("--webhook-url")
    ing.add_argument("--wait", action="store_true", help="show progress, then print the markdown")

    proc = sub.add_parser("process", help="process one file or URL now (nothing stored), print markdown")
    proc.add_argument("source", metavar="PATH|URL")
    input_options(proc)

    st = sub.add_parser("status", help="one task's status")
    st.add_argument("task_id")
    st.add_argument("--wait", action="store_true", help="follow it until it ends")

    ls = sub.add_parser("list", help="your tasks, newest first")
    ls.add_argument("--status", choices=STATES)
    ls.add_argument("--limit", type=int, default=20)

    for name, text in (("cancel", "cancel a queued or running task"), ("retry", "queue a failed task again")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("task_id")
        if name == "retry":
            sp.add_argument("--wait", action="store_true")

    se = sub.add_parser("search", help="search your indexed chunks")
    se.add_argument("query")
    se.add_argument("--limit", type=int, default=5)
    se.add_argument("--filter", action="append", metavar="K=V", help="metadata filter (repeatable)")

    sub.add_parser("documents", help="your indexed documents with their chunk counts")
    sub.add_parser("workers", help="your workers: online, lanes, current jobs")
    sub.add_parser("queues", help="your lanes: queued, running, oldest waiting, workers online")

    ck = sub.add_parser("cookies", help="cookies for sites behind a sign-in")
    cks = ck.add_subparsers(dest="action", required=True, metavar="ACTION")
    cks.add_parser("set", help="upload a Netscape cookies.txt").add_argument("file", type=Path)
    cks.add_parser("list", help="stored domains and counts")
    cks.add_parser("delete", help="delete one domain's cookies, or all").add_argument("domain", nargs="?")

    pr = sub.add_parser("prune", help="delete your finished tasks older than N days")
    pr.add_argument("--older-than-days", type=float, required=True)
    pr.add_argument("--status", choices=["succeeded", "failed", "canceled", "dead"])
    pr.add_argument("--all-users", action="store_true", help="every user's tasks (admin key)")
    return p
