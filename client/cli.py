"""The ``morag`` command (also ``python -m client``): ingest, follow and search from a shell.

Exit codes (also in ``morag --help``):

    0  done: the request succeeded (with --wait: every task succeeded)
    1  a task failed, died or was canceled
    2  usage or authentication: bad arguments, no or wrong key, a request the server refused (4xx)
    3  the server could not be reached, failed (5xx), or --timeout passed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from client import models as m
from client.api import MoragClient
from client.config import ConfigError, resolve
from client.errors import ApiError, AuthError, MoragClientError, TaskTimeout
from client.progress import Progress

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
STATES = ["queued", "running", "succeeded", "failed", "canceled", "dead"]
CONTENT_TYPES = ["audio", "video", "youtube", "document", "web", "image", "echo"]
EPILOG = """exit codes: 0 done; 1 a task failed, died or was canceled; 2 usage or authentication
(bad arguments, missing or wrong key, request refused); 3 server unreachable, server error or
--timeout passed.

server and key: --server/--api-key, else MORAG_SERVER/MORAG_API_KEY, else
~/.config/morag/config.toml (server = "...", api_key = "...")."""


class UsageError(Exception):
    """Bad arguments found after parsing (a missing file, a malformed k=v)."""


def _kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (numbers, true, lists) is taken as JSON."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _parser() -> argparse.ArgumentParser:
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


class Cli:
    def __init__(self, client: MoragClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.client = client
        self.args = args
        self.out = out
        self.err = err

    def emit(self, value: Any) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)

    def say(self, text: str) -> None:
        print(text, file=self.out)

    # --- commands -------------------------------------------------------------------------------
    def ingest(self) -> int:
        a = self.args
        if a.document_id and len(a.sources) > 1:
            raise UsageError("--document-id names one document; give one source with it")
        fields: dict[str, Any] = {
            "content_type": a.content_type,
            "options": _kv(a.option, "--option") or None,
            "metadata": _kv(a.metadata, "--metadata") or None,
            "document_id": a.document_id,
            "replace_existing": True if a.replace else None,
            "lane": a.lane,
            "priority": a.priority,
            "webhook_url": a.webhook_url,
        }
        for source in a.sources:
            if not _is_url(source) and not Path(source).is_file():
                raise UsageError(f"{source}: no such file (URLs start with http:// or https://)")
        labels: dict[str, str] = {}
        for source in a.sources:
            if _is_url(source):
                created = self.client.ingest_url(source, **fields)
            else:
                created = self.client.ingest_file(source, **fields)
            labels[created.task_id] = source
            if not a.wait and not a.json:
                self.say(f"queued {created.task_id}  {source}")
        if not a.wait:
            if a.json:
                self.emit([{"task_id": t, "status": "queued", "source": s} for t, s in labels.items()])
            return EXIT_OK
        return self._follow(labels)

    def _follow(self, labels: dict[str, str]) -> int:
        """Poll every task until all are final; progress lines on stderr, markdown on stdout."""
        progress = Progress(self.err, labels)
        pending = dict(labels)
        done: dict[str, m.Task] = {}
        deadline = None if self.args.timeout is None else time.monotonic() + self.args.timeout
        while pending:
            for tid in list(pending):
                task = self.client.status(tid)
                progress.update(task)
                if task.final:
                    done[tid] = task
                    del pending[tid]
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskTimeout(next(iter(pending)), self.args.timeout)
            time.sleep(0.5)
        tasks = [done[t] for t in labels]
        if self.args.json:
            self.emit(tasks)
        else:
            for task in tasks:
                if len(tasks) > 1:
                    self.say(f"\n===== {labels[task.task_id]} ({task.task_id}) =====")
                if task.status == "succeeded":
                    self.say(task.markdown or "")
                else:
                    self.say(f"{task.status}: [{task.error_class or '-'}] {task.error or task.message or ''}")
        return EXIT_OK if all(t.status == "succeeded" for t in tasks) else EXIT_TASK_FAILED

    def process(self) -> int:
        a = self.args
        options = _kv(a.option, "--option") or None
        wait_s = min(600.0, a.timeout) if a.timeout else 60.0
        if _is_url(a.source):
            answer = self.client.process_url(
                a.source, content_type=a.content_type, options=options, wait_s=wait_s
            )
        else:
            if not Path(a.source).is_file():
                raise UsageError(f"{a.source}: no such file (URLs start with http:// or https://)")
            answer = self.client.process_file(
                a.source, content_type=a.content_type, options=options, wait_s=wait_s
            )
        if isinstance(answer, m.TaskCreated):  # longer than wait_s: follow it like an ingest
            return self._follow({answer.task_id: a.source})
        if a.json:
            self.emit(answer)
        elif answer.success:
            self.say(answer.content or "")
        else:
            print(f"failed: {answer.error_message}", file=self.err)
        return EXIT_OK if answer.success else EXIT_TASK_FAILED

    def status(self) -> int:
        if self.args.wait:
            return self._follow({self.args.task_id: self.args.task_id})
        task = self.client.status(self.args.task_id)
        if self.args.json:
            self.emit(task)
            return EXIT_OK
        rows = [
            ("task", task.task_id),
            ("status", task.status),
            ("stage", task.stage),
            ("progress", f"{task.progress * 100:.0f}%"),
            ("message", task.message or "-"),
            ("type", task.content_type),
            ("lane", task.lane),
            ("attempts", f"{task.attempts}/{task.max_attempts}"),
            ("worker", task.worker_id or "-"),
            ("created", _ts(task.created_at)),
            ("finished", _ts(task.finished_at)),
        ]
        if task.error:
            rows.append(("error", f"[{task.error_class or '-'}] {task.error}"))
        if task.document_id:
            rows.append(("document", task.document_id))
        for art in task.artifacts:
            rows.append(("artifact", f"{art.name} ({art.mime}, {art.size} bytes) {art.url}"))
        for k, v in rows:
            self.say(f"{k:<9} {v}")
        if task.markdown:
            self.say("\n" + task.markdown)
        return EXIT_OK

    def list(self) -> int:
        page = self.client.list_tasks(self.args.status, limit=self.args.limit)
        if self.args.json:
            self.emit(page)
            return EXIT_OK
        if not page.tasks:
            self.say("no tasks")
        for t in page.tasks:
            text = t.error if t.status in ("failed", "dead") else (t.message or "")
            self.say(
                f"{t.task_id}  {t.status:<9} {t.progress * 100:3.0f}%  {t.content_type:<8} "
                f"{_ts(t.created_at)}  {(text or '')[:60]}"
            )
        return EXIT_OK

    def cancel(self) -> int:
        answer = self.client.cancel(self.args.task_id)
        self.emit(answer) if self.args.json else self.say(f"{answer.task_id} {answer.status}")
        return EXIT_OK

    def retry(self) -> int:
        answer = self.client.retry(self.args.task_id)
        if self.args.wait:
            return self._follow({answer.task_id: self.args.task_id})
        self.emit(answer) if self.args.json else self.say(f"{answer.task_id} {answer.status} again")
        return EXIT_OK

    def search(self) -> int:
        found = self.client.search(
            self.args.query, limit=self.args.limit, filters=_kv(self.args.filter, "--filter") or None
        )
        if self.args.json:
            self.emit(found)
            return EXIT_OK
        if not found.results:
            self.say("no hits")
        for n, hit in enumerate(found.results, 1):
            self.say(f"{n}. {hit.score:.3f}  {hit.document_id} #{hit.chunk_index}  {_where(hit.location)}")
            if hit.source:
                self.say(f"   {hit.source}")
            self.say("   " + " ".join(hit.text.split())[:300])
        return EXIT_OK

    def documents(self) -> int:
        docs = self.client.documents()
        if self.args.json:
            self.emit(docs)
            return EXIT_OK
        if not docs.documents:
            self.say("no documents")
        for d in docs.documents:
            chunks = f"{d.chunks} chunk" + ("" if d.chunks == 1 else "s")
            self.say(f"{d.document_id}  {chunks:>10}  {d.content_type or '-':<8}  {d.source or '-'}")
        return EXIT_OK

    def workers(self) -> int:
        ws = self.client.workers()
        if self.args.json:
            self.emit(ws)
            return EXIT_OK
        if not ws.workers:
            self.say("no workers (start one with: python -m worker --api-key WORKER_KEY --server URL)")
        for w in ws.workers:
            state = "online " if w.online else "offline"
            jobs = ", ".join(w.current_jobs) or "idle"
            self.say(
                f"{w.name or w.worker_id}  {state}  {w.device or ''}  lanes={','.join(w.lanes) or '-'}  "
                f"types={','.join(w.content_types) or 'all'}  last seen {_ts(w.last_seen_at)}  {jobs}"
            )
        return EXIT_OK

    def queues(self) -> int:
        stats = self.client.queue_stats()
        if self.args.json:
            self.emit(stats)
            return EXIT_OK
        for lane in stats.lanes:
            oldest = "-" if lane.oldest_queued_age_s is None else f"{lane.oldest_queued_age_s:.0f}s"
            self.say(
                f"{lane.lane:<12} queued={lane.queued} running={lane.running} oldest={oldest} "
                f"workers_online={lane.workers_online}"
            )
        return EXIT_OK

    def cookies(self) -> int:
        a = self.args
        if a.action == "set":
            try:
                text = a.file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(f"{a.file}: {exc}") from exc
            answer = self.client.set_cookies(text)
        elif a.action == "delete":
            answer = self.client.delete_cookies(a.domain)
        else:
            answer = self.client.list_cookies()
        if a.json:
            self.emit(answer)
        else:
            for d in answer.domains:
                self.say(f"{d.domain}  {d.count} cookies  updated {_ts(d.updated_at)}")
            self.say(f"{answer.total} cookies stored")
        return EXIT_OK

    def prune(self) -> int:
        a = self.args
        answer = self.client.prune_tasks(a.older_than_days, status=a.status, all_users=a.all_users)
        self.emit(answer) if a.json else self.say(f"deleted {answer.deleted} tasks")
        return EXIT_OK


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _where(loc: dict[str, Any]) -> str:
    parts = []
    if loc.get("page") is not None:
        parts.append(f"page {loc['page']}")
    if loc.get("start") is not None:
        parts.append(f"{_clock(loc['start'])}-{_clock(loc.get('end') or loc['start'])}")
    if loc.get("heading_path"):
        parts.append(" > ".join(map(str, loc["heading_path"])))
    return "  ".join(parts)


def _clock(seconds: Any) -> str:
    s = int(float(seconds))
    return f"{s // 60}:{s % 60:02d}"


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)  # exits 2 on bad usage
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
