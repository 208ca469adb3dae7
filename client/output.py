"""What the ``morag`` command prints: JSON for scripts (``--json``), else one line per thing."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from client import models as m


def as_json(value: Any) -> str:
    """A model, a list of them or plain data as indented JSON."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return json.dumps(value, indent=2, ensure_ascii=False)


def outcome(task: m.Task) -> str:
    """A final task: its markdown when it succeeded, else the state and the error."""
    if task.status == "succeeded":
        return task.markdown or ""
    return f"{task.status}: [{task.error_class or '-'}] {task.error or task.message or ''}"


def status_lines(task: m.Task) -> list[str]:
    """``morag status``: one field a line, then the markdown when there is one."""
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
        ("created", ts(task.created_at)),
        ("finished", ts(task.finished_at)),
    ]
    if task.error:
        rows.append(("error", f"[{task.error_class or '-'}] {task.error}"))
    if task.document_id:
        rows.append(("document", task.document_id))
    for art in task.artifacts:
        rows.append(("artifact", f"{art.name} ({art.mime}, {art.size} bytes) {art.url}"))
    lines = [f"{k:<9} {v}" for k, v in rows]
    if task.markdown:
        lines.append("\n" + task.markdown)
    return lines


def task_line(t: m.Task) -> str:
    """One task of ``morag list``."""
    text = t.error if t.status in ("failed", "dead") else (t.message or "")
    return (
        f"{t.task_id}  {t.status:<9} {t.progress * 100:3.0f}%  {t.content_type:<8} "
        f"{ts(t.created_at)}  {(text or '')[:60]}"
    )


def hit_lines(n: int, hit: m.SearchHit) -> list[str]:
    """The ``n``-th hit of ``morag search``: score and place, source, the text on one line."""
    lines = [f"{n}. {hit.score:.3f}  {hit.document_id} #{hit.chunk_index}  {where(hit.location)}"]
    if hit.source:
        lines.append(f"   {hit.source}")
    lines.append("   " + " ".join(hit.text.split())[:300])
    return lines


def document_line(d: m.Document) -> str:
    chunks = f"{d.chunks} chunk" + ("" if d.chunks == 1 else "s")
    return f"{d.document_id}  {chunks:>10}  {d.content_type or '-':<8}  {d.source or '-'}"


def worker_line(w: m.Worker) -> str:
    state = "online " if w.online else "offline"
    jobs = ", ".join(w.current_jobs) or "idle"
    return (
        f"{w.name or w.worker_id}  {state}  {w.device or ''}  lanes={','.join(w.lanes) or '-'}  "
        f"types={','.join(w.content_types) or 'all'}  last seen {ts(w.last_seen_at)}  {jobs}"
    )


def lane_line(lane: m.LaneStats) -> str:
    oldest = "-" if lane.oldest_queued_age_s is None else f"{lane.oldest_queued_age_s:.0f}s"
    return (
        f"{lane.lane:<12} queued={lane.queued} running={lane.running} oldest={oldest} "
        f"workers_online={lane.workers_online}"
    )


def cookie_lines(answer: m.CookieList) -> list[str]:
    lines = [f"{d.domain}  {d.count} cookies  updated {ts(d.updated_at)}" for d in answer.domains]
    lines.append(f"{answer.total} cookies stored")
    return lines


def ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def where(loc: dict[str, Any]) -> str:
    """Where a hit is: page, time span, heading path."""
    parts = []
    if loc.get("page") is not None:
        parts.append(f"page {loc['page']}")
    if loc.get("start") is not None:
        parts.append(f"{clock(loc['start'])}-{clock(loc.get('end') or loc['start'])}")
    if loc.get("heading_path"):
        parts.append(" > ".join(map(str, loc["heading_path"])))
    return "  ".join(parts)


def clock(seconds: Any) -> str:
    s = int(float(seconds))
    return f"{s // 60}:{s % 60:02d}"
