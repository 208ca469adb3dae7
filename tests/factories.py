"""Row factories for tests: users, keys, principals and jobs."""

from __future__ import annotations

from typing import Any

from api import keystore
from api.jobs import NewJob
from api.keystore import Principal, Scope
from protocol.states import LaneKind


async def make_user(
    engine: Any, name: str, scope: Scope = Scope.worker, shared_fallback: bool = True
) -> tuple[Principal, str]:
    """Create a user (if needed) and a key of ``scope``; returns (principal, key)."""
    try:
        await keystore.create_user(engine, name, shared_fallback=shared_fallback)
    except Exception:
        pass
    _, key = await keystore.create_key(engine, name, scope)
    who = await keystore.authenticate(engine, key)
    assert who is not None
    return who, key


async def submit(
    store: Any, owner: Principal, content_type: str = "echo", lane: LaneKind = LaneKind.cpu, **kw: Any
) -> str:
    return await store.jobs.enqueue(
        owner,
        NewJob(content_type=content_type, lane_kind=lane, options=kw.pop("options", {}), **kw),
    )


async def claim(
    store: Any,
    who: Principal,
    worker_id: str = "w1",
    lanes: tuple[LaneKind, ...] = (LaneKind.cpu,),
    content_types: tuple[str, ...] = ("echo",),
    n: int = 1,
    claim_id: str | None = None,
) -> list[Any]:
    return await store.jobs.claim(who, worker_id, list(lanes), list(content_types), n, claim_id)


def rich_and_bare_jobs() -> tuple[NewJob, NewJob]:
    """A job with every optional field set (JSON with nesting, non-ASCII, a JSON null inside) and
    one with none: what a store must write alike whichever statement inserts them."""
    from api.jobs.records import JobKind

    rich = NewJob(
        content_type="document",
        lane_kind=LaneKind.gpu,
        kind=JobKind.ingest,
        source_url="https://example.org/ü.pdf",
        options={"nested": [1, {"b": "ü"}], "fast": True, "none": None},
        priority=3,
        document_id="doc-1",
        webhook_url="https://hooks.example.org/x",
        index_options={"chunk_size": 500},
    )
    bare = NewJob(content_type="echo", lane_kind=LaneKind.cpu, source_url="https://example.org/a")
    return rich, bare


def sqlite_trips(monkeypatch: Any) -> list[str]:
    """From now on, the name of every function an aiosqlite connection hands to its thread (one
    trip each, api/db.py)."""
    import aiosqlite

    seen: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen
