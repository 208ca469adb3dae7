"""``MoragClient`` (sync) and ``AsyncMoragClient``: every client operation of the morag-remote API.

    with MoragClient("http://127.0.0.1:8000", "mrg_...") as morag:
        task = morag.ingest_file("talk.mp3")
        done = morag.wait(task.task_id)
        print(done.markdown)

Non-2xx answers raise ``ApiError`` (``code`` is the server's stable code); transport failures
raise ``ServerUnreachable``. Both clients build their requests from ``client.requests``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from client import models as m
from client import requests as rq
from client.errors import ServerUnreachable, TaskTimeout, from_response

T = TypeVar("T", bound=BaseModel)
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "morag-client/0.1"


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"User-Agent": USER_AGENT}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def _parse(call: rq.Call[T], resp: httpx.Response) -> T:
    if resp.status_code >= 300:
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        raise from_response(resp.status_code, body, resp.text)
    return call.model.model_validate(resp.json())


def _kwargs(call: rq.Call[Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"params": call.params or None, "headers": call.headers or None}
    if call.json is not None:
        kw["json"] = call.json
    if call.data is not None:
        kw["data"] = call.data
    if call.content is not None:
        kw["content"] = call.content
    if call.timeout is not None:
        kw["timeout"] = call.timeout
    return kw


class MoragClient:
    """A synchronous client; use it as a context manager or call ``close()``."""

    def __init__(
        self,
        server: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> MoragClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, call: rq.Call[Any]) -> httpx.Response:
        kw = _kwargs(call)
        try:
            if call.upload:
                name, path = call.upload
                with path.open("rb") as fh:
                    kw["files"] = {name: (path.name, fh, rq.guess_mime(path))}
                    return self._http.request(call.method, call.path, **kw)
            return self._http.request(call.method, call.path, **kw)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.server}: {exc.__class__.__name__}: {exc}") from exc

    def _send(self, call: rq.Call[T]) -> T:
        return _parse(call, self._request(call))

    # --- ingest and process ---------------------------------------------------------------------
    def ingest_file(self, path: str | Path, **fields: Any) -> m.TaskCreated:
        """Upload a file for processing and indexing (fields: see ``requests.ingest_fields``)."""
        return self._send(rq.ingest_file(Path(path), rq.ingest_fields(**fields)))

    def ingest_url(self, url: str, **fields: Any) -> m.TaskCreated:
        """Queue a URL (web page, YouTube, media) for processing and indexing."""
        return self._send(rq.ingest_url(url, rq.ingest_fields(**fields)))

    def ingest_batch(self, items: list[dict[str, Any]]) -> m.BatchCreated:
        """Queue several URL items (``{"url": ..., **fields}``) at once."""
        return self._send(rq.ingest_batch(items))

    def batch_status(self, batch_id: str) -> m.BatchStatus:
        return self._send(rq.batch_status(batch_id))

    def process_file(
        self,
        path: str | Path,
        *,
        content_type: str | None = None,
        options: dict[str, Any] | None = None,
        wait_s: float = 60,
    ) -> m.ProcessResult | m.TaskCreated:
        """Process a file without storing it; a ``TaskCreated`` when it takes longer than ``wait_s``."""
        fields = rq.ingest_fields(content_type=content_type, options=options)
        return self._process(rq.process_file(Path(path), fields, wait_s))

    def process_url(
        self,
        url: str,
        *,
        content_type: str | None = None,
        options: dict[str, Any] | None = None,
        wait_s: float = 60,
    ) -> m.ProcessResult | m.TaskCreated:
        """Process a URL without storing it; a ``TaskCreated`` when it takes longer than ``wait_s``."""
        fields = rq.ingest_fields(content_type=content_type, options=options)
        return self._process(rq.process_url(url, fields, wait_s))

    def _process(self, call: rq.Call[m.ProcessResult]) -> m.ProcessResult | m.TaskCreated:
        resp = self._request(call)
        if resp.status_code == 202:  # still running after wait_s: follow the task
            return m.TaskCreated.model_validate(resp.json())
        return _parse(call, resp)

    # --- follow ---------------------------------------------------------------------------------
    def status(self, task_id: str) -> m.Task:
        return self._send(rq.status(task_id))

    def list_tasks(
        self, status: str | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> m.TaskList:
        """One page of the caller's tasks, newest first (``next_cursor`` for the next page)."""
        return self._send(rq.list_tasks(status, limit, cursor))

    def iter_tasks(self, status: str | None = None, *, page_size: int = 100) -> Iterator[m.Task]:
        """Every task of the caller, newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.list_tasks(status, limit=page_size, cursor=cursor)
            yield from page.tasks
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_update: Callable[[m.Task], None] | None = None,
    ) -> m.Task:
        """Poll until the task is final; ``on_update`` sees every status read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.status(task_id)
            if on_update:
                on_update(task)
            if task.final:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskTimeout(task_id, timeout or 0)
            time.sleep(poll_s)

    def cancel(self, task_id: str) -> m.TaskCreated:
        return self._send(rq.cancel(task_id))

    def retry(self, task_id: str) -> m.TaskCreated:
        """Queue a failed, dead or canceled task again (same input, attempts reset)."""
        return self._send(rq.retry(task_id))

    def webhook_deliveries(self, task_id: str) -> m.WebhookDeliveries:
        return self._send(rq.webhook_deliveries(task_id))

    def prune_tasks(
        self, older_than_days: float, *, status: str | None = None, all_users: bool = False
    ) -> m.PruneResult:
        """Delete finished tasks older than this (``all_users`` needs an admin key)."""
        return self._send(rq.prune_tasks(older_than_days, status, all_users))

    def queue_stats(self) -> m.QueueStats:
        return self._send(rq.queue_stats())

    def workers(self) -> m.WorkerList:
        return self._send(rq.workers())

    def artifact(self, url: str) -> bytes:
        """Download an artifact by its ``url`` (from ``Task.artifacts``)."""
        try:
            resp = self._http.get(url)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.server}: {exc}") from exc
        if resp.status_code >= 300:
            raise from_response(resp.status_code, _json_or_none(resp), resp.text)
        return resp.content

    # --- search and documents -------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        limit: int = 10,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> m.SearchResponse:
        return self._send(rq.search(query, limit, filters, score_threshold))

    def documents(self) -> m.DocumentList:
        return self._send(rq.documents())

    def delete_document(self, document_id: str) -> m.DocumentDeleted:
        return self._send(rq.delete_document(document_id))

    # --- cookies --------------------------------------------------------------------------------
    def set_cookies(self, text: str) -> m.CookieList:
        """Upload a Netscape cookies.txt (merged per domain with what is stored)."""
        return self._send(rq.set_cookies(text))

    def list_cookies(self) -> m.CookieList:
        return self._send(rq.list_cookies())

    def delete_cookies(self, domain: str | None = None) -> m.CookieList:
        return self._send(rq.delete_cookies(domain))


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


class AsyncMoragClient:
    """The same operations for asyncio code (``async with AsyncMoragClient(...) as morag``)."""

    def __init__(
        self,
        server: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.server, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncMoragClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, call: rq.Call[Any]) -> httpx.Response:
        kw = _kwargs(call)
        try:
            if call.upload:
                name, path = call.upload
                kw["files"] = {name: (path.name, path.read_bytes(), rq.guess_mime(path))}
            return await self._http.request(call.method, call.path, **kw)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.server}: {exc.__class__.__name__}: {exc}") from exc

    async def _send(self, call: rq.Call[T]) -> T:
        return _parse(call, await self._request(call))

    async def ingest_file(self, path: str | Path, **fields: Any) -> m.TaskCreated:
        return await self._send(rq.ingest_file(Path(path), rq.ingest_fields(**fields)))

    async def ingest_url(self, url: str, **fields: Any) -> m.TaskCreated:
        return await self._send(rq.ingest_url(url, rq.ingest_fields(**fields)))

    async def ingest_batch(self, items: list[dict[str, Any]]) -> m.BatchCreated:
        return await self._send(rq.ingest_batch(items))

    async def batch_status(self, batch_id: str) -> m.BatchStatus:
        return await self._send(rq.batch_status(batch_id))

    async def status(self, task_id: str) -> m.Task:
        return await self._send(rq.status(task_id))

    async def list_tasks(
        self, status: str | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> m.TaskList:
        return await self._send(rq.list_tasks(status, limit, cursor))

    async def wait(self, task_id: str, *, timeout: float | None = None, poll_s: float = 0.5) -> m.Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = await self.status(task_id)
            if task.final:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskTimeout(task_id, timeout or 0)
            await asyncio.sleep(poll_s)

    async def cancel(self, task_id: str) -> m.TaskCreated:
        return await self._send(rq.cancel(task_id))

    async def retry(self, task_id: str) -> m.TaskCreated:
        return await self._send(rq.retry(task_id))

    async def queue_stats(self) -> m.QueueStats:
        return await self._send(rq.queue_stats())

    async def workers(self) -> m.WorkerList:
        return await self._send(rq.workers())

    async def search(
        self,
        query: str,
        *,
        limit: int = 10,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> m.SearchResponse:
        return await self._send(rq.search(query, limit, filters, score_threshold))

    async def documents(self) -> m.DocumentList:
        return await self._send(rq.documents())

    async def delete_document(self, document_id: str) -> m.DocumentDeleted:
        return await self._send(rq.delete_document(document_id))

    async def set_cookies(self, text: str) -> m.CookieList:
        return await self._send(rq.set_cookies(text))

    async def list_cookies(self) -> m.CookieList:
        return await self._send(rq.list_cookies())

    async def delete_cookies(self, domain: str | None = None) -> m.CookieList:
        return await self._send(rq.delete_cookies(domain))

    async def process_file(
        self,
        path: str | Path,
        *,
        content_type: str | None = None,
        options: dict[str, Any] | None = None,
        wait_s: float = 60,
    ) -> m.ProcessResult | m.TaskCreated:
        fields = rq.ingest_fields(content_type=content_type, options=options)
        return await self._process(rq.process_file(Path(path), fields, wait_s))

    async def process_url(
        self,
        url: str,
        *,
        content_type: str | None = None,
        options: dict[str, Any] | None = None,
        wait_s: float = 60,
    ) -> m.ProcessResult | m.TaskCreated:
        fields = rq.ingest_fields(content_type=content_type, options=options)
        return await self._process(rq.process_url(url, fields, wait_s))

    async def _process(self, call: rq.Call[m.ProcessResult]) -> m.ProcessResult | m.TaskCreated:
        resp = await self._request(call)
        if resp.status_code == 202:
            return m.TaskCreated.model_validate(resp.json())
        return _parse(call, resp)

    async def webhook_deliveries(self, task_id: str) -> m.WebhookDeliveries:
        return await self._send(rq.webhook_deliveries(task_id))

    async def prune_tasks(
        self, older_than_days: float, *, status: str | None = None, all_users: bool = False
    ) -> m.PruneResult:
        return await self._send(rq.prune_tasks(older_than_days, status, all_users))

    async def artifact(self, url: str) -> bytes:
        try:
            resp = await self._http.get(url)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.server}: {exc}") from exc
        if resp.status_code >= 300:
            raise from_response(resp.status_code, _json_or_none(resp), resp.text)
        return resp.content
