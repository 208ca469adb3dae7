"""One description per API operation (method, path, body, answer model), shared by the sync and the
async client so both speak exactly the same API."""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from client import models as m

T = TypeVar("T", bound=BaseModel)
API = "/api/v1"


@dataclass
class Call(Generic[T]):
    """An HTTP request and the model its 2xx answer parses into."""

    method: str
    path: str
    model: type[T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    upload: tuple[str, Path] | None = None  # (form field, file): opened only while sending
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the client's default


def _seg(value: str) -> str:
    return quote(value, safe="")


def ingest_fields(
    *,
    content_type: str | None = None,
    options: dict[str, Any] | None = None,
    lane: str | None = None,
    priority: int | None = None,
    metadata: dict[str, Any] | None = None,
    document_id: str | None = None,
    replace_existing: bool | None = None,
    webhook_url: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
) -> dict[str, Any]:
    """The optional fields of an ingest, without the ones left unset."""
    raw = {
        "content_type": content_type,
        "options": options,
        "lane": lane,
        "priority": priority,
        "metadata": metadata,
        "document_id": document_id,
        "replace_existing": replace_existing,
        "webhook_url": webhook_url,
        "chunk_size": chunk_size,
        "chunk_overlap": chunk_overlap,
    }
    return {k: v for k, v in raw.items() if v is not None}


def _form(fields: dict[str, Any]) -> dict[str, str]:
    """Multipart text fields: JSON objects as JSON text, booleans as true/false."""
    out = {}
    for k, v in fields.items():
        if isinstance(v, dict | list):
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


def ingest_file(path: Path, fields: dict[str, Any]) -> Call[m.TaskCreated]:
    return Call("POST", f"{API}/ingest/file", m.TaskCreated, data=_form(fields), upload=("file", path))


def ingest_url(url: str, fields: dict[str, Any]) -> Call[m.TaskCreated]:
    return Call("POST", f"{API}/ingest/url", m.TaskCreated, json={"url": url, **fields})


def ingest_batch(items: list[dict[str, Any]]) -> Call[m.BatchCreated]:
    return Call("POST", f"{API}/ingest/batch", m.BatchCreated, json={"items": items})


def batch_status(batch_id: str) -> Call[m.BatchStatus]:
    return Call("GET", f"{API}/ingest/batch/{_seg(batch_id)}", m.BatchStatus)


def process_file(path: Path, fields: dict[str, Any], wait_s: float) -> Call[m.ProcessResult]:
    return Call(
        "POST",
        "/process/file",
        m.ProcessResult,
        params={"wait_s": wait_s},
        data=_form(fields),
        upload=("file", path),
        timeout=wait_s + 30,
    )


def process_url(url: str, fields: dict[str, Any], wait_s: float) -> Call[m.ProcessResult]:
    return Call(
        "POST",
        "/process/url",
        m.ProcessResult,
        json={"url": url, "wait_s": wait_s, **fields},
        timeout=wait_s + 30,
    )


def status(task_id: str) -> Call[m.Task]:
    return Call("GET", f"{API}/status/{_seg(task_id)}", m.Task)


def list_tasks(status: str | None, limit: int, cursor: str | None) -> Call[m.TaskList]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    return Call("GET", f"{API}/tasks", m.TaskList, params=params)


def cancel(task_id: str) -> Call[m.TaskCreated]:
    return Call("DELETE", f"{API}/ingest/{_seg(task_id)}", m.TaskCreated)


def retry(task_id: str) -> Call[m.TaskCreated]:
    return Call("POST", f"{API}/tasks/{_seg(task_id)}/retry", m.TaskCreated)


def webhook_deliveries(task_id: str) -> Call[m.WebhookDeliveries]:
    return Call("GET", f"{API}/tasks/{_seg(task_id)}/webhooks", m.WebhookDeliveries)


def prune_tasks(older_than_days: float, status: str | None, all_users: bool) -> Call[m.PruneResult]:
    body: dict[str, Any] = {"older_than_days": older_than_days, "all_users": all_users}
    if status:
        body["status"] = status
    return Call("POST", f"{API}/tasks/prune", m.PruneResult, json=body)


def queue_stats() -> Call[m.QueueStats]:
    return Call("GET", f"{API}/status/stats/queues", m.QueueStats)


def workers() -> Call[m.WorkerList]:
    return Call("GET", f"{API}/workers", m.WorkerList)


def search(
    query: str, limit: int, filters: dict[str, Any] | None, score_threshold: float | None
) -> Call[m.SearchResponse]:
    body: dict[str, Any] = {"query": query, "limit": limit}
    if filters:
        body["filters"] = filters
    if score_threshold is not None:
        body["score_threshold"] = score_threshold
    return Call("POST", f"{API}/search", m.SearchResponse, json=body)


def documents() -> Call[m.DocumentList]:
    return Call("GET", f"{API}/documents", m.DocumentList)


def delete_document(document_id: str) -> Call[m.DocumentDeleted]:
    return Call("DELETE", f"{API}/documents/{_seg(document_id)}", m.DocumentDeleted)


def set_cookies(text: str) -> Call[m.CookieList]:
    return Call(
        "PUT",
        f"{API}/cookies",
        m.CookieList,
        content=text.encode(),
        headers={"content-type": "text/plain"},
    )


def list_cookies() -> Call[m.CookieList]:
    return Call("GET", f"{API}/cookies", m.CookieList)


def delete_cookies(domain: str | None) -> Call[m.CookieList]:
    path = f"{API}/cookies" + (f"/{_seg(domain)}" if domain else "")
    return Call("DELETE", path, m.CookieList)


def guess_mime(path: Path) -> str:
    """A hint only: the server recognises uploads from their bytes."""
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"
