"""The ``morag`` command's commands: each calls the client and prints through :mod:`client.output`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

from client import models as m
from client import output
from client.api import MoragClient
from client.errors import TaskTimeout
from client.progress import Progress

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


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


class Cli:
    """One method per command (named as on the command line); each returns the exit code."""

    def __init__(self, client: MoragClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.client = client
        self.args = args
        self.out = out
        self.err = err

    def emit(self, value: Any) -> None:
        print(output.as_json(value), file=self.out)

    def say(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.out)

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
                self.say(output.outcome(task))
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
        self.say(*output.status_lines(task))
        return EXIT_OK

    def list(self) -> int:
        page = self.client.list_tasks(self.args.status, limit=self.args.limit)
        if self.args.json:
            self.emit(page)
            return EXIT_OK
        if not page.tasks:
            self.say("no tasks")
        self.say(*(output.task_line(t) for t in page.tasks))
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
            self.say(*output.hit_lines(n, hit))
        return EXIT_OK

    def documents(self) -> int:
        docs = self.client.documents()
        if self.args.json:
            self.emit(docs)
            return EXIT_OK
        if not docs.documents:
            self.say("no documents")
        self.say(*(output.document_line(d) for d in docs.documents))
        return EXIT_OK

    def workers(self) -> int:
        ws = self.client.workers()
        if self.args.json:
            self.emit(ws)
            return EXIT_OK
        if not ws.workers:
            self.say("no workers (start one with: python -m worker --api-key WORKER_KEY --server URL)")
        self.say(*(output.worker_line(w) for w in ws.workers))
        return EXIT_OK

    def queues(self) -> int:
        stats = self.client.queue_stats()
        if self.args.json:
            self.emit(stats)
            return EXIT_OK
        self.say(*(output.lane_line(lane) for lane in stats.lanes))
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
            self.say(*output.cookie_lines(answer))
        return EXIT_OK

    def prune(self) -> int:
        a = self.args
        answer = self.client.prune_tasks(a.older_than_days, status=a.status, all_users=a.all_users)
        self.emit(answer) if a.json else self.say(f"deleted {answer.deleted} tasks")
        return EXIT_OK
