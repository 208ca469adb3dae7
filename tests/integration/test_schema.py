"""`alembic upgrade head` gives exactly the schema of the models, on both backends."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import api.models  # noqa: F401


async def test_migrations_match_models(database_url):
    engine = create_async_engine(database_url)

    def diff(conn):
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, SQLModel.metadata)

    def index_names(conn):
        from sqlalchemy import inspect

        return {ix["name"] for ix in inspect(conn).get_indexes("jobs")}

    async with engine.connect() as conn:
        changes = await conn.run_sync(diff)
        indexes = await conn.run_sync(index_names)
    await engine.dispose()
    # Alembic cannot reflect expression indexes (priority DESC) on every backend: check it by name.
    expression_index = "ix_jobs_claim_lane"
    changes = [
        c for c in changes if not (c[0] in ("add_index", "remove_index") and c[1].name == expression_index)
    ]
    assert changes == []
    assert expression_index in indexes


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_claim_uses_its_partial_index_on_postgres(store):
    """The real claim walks the queued-only index, not the primary key (shared/POSTGRES-QUEUE.md)."""
    from sqlalchemy import event, text

    from protocol.states import LaneKind
    from tests.factories import make_user, submit

    alice, _ = await make_user(store.engine, "alice")
    bob, _ = await make_user(store.engine, "bob")
    for _ in range(10):
        await submit(store, alice)
    template = await submit(store, bob)
    async with store.engine.begin() as conn:
        # Many finished rows and another user's deep queue: the index must pick alice's lane out.
        await conn.execute(
            text(
                "INSERT INTO jobs (id, user_id, lane, content_type, kind, options, state, stage, "
                "priority, attempt, max_attempts, run_after, created_at, progress, index_attempts) "
                "SELECT md5(g::text), user_id, lane, content_type, kind, options, "
                "CASE WHEN g % 2 = 0 THEN 'succeeded' ELSE 'queued' END, stage, priority, attempt, "
                "max_attempts, run_after, created_at, progress, index_attempts "
                "FROM jobs, generate_series(1, 20000) g "
                f"WHERE jobs.id = '{template}'"
            )
        )
        await conn.execute(text("ANALYZE jobs"))
    # Capture the claim exactly as the driver receives it, then EXPLAIN that (no execution).
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "SKIP LOCKED" in statement:
            sent.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    try:
        assert len(await store.jobs.claim(alice, "w", [LaneKind.cpu], ["echo"], 5, None)) == 5
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", grab)
    statement, parameters = sent[0]
    async with store.engine.begin() as conn:
        plan = "\n".join((await conn.exec_driver_sql("EXPLAIN " + statement, parameters)).scalars().all())
    assert "ix_jobs_claim_lane" in plan, plan
