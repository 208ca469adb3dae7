"""The upkeep loops' lines about one job carry its task id (api/jobs/upkeep.py), as the indexer's do."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from sqlalchemy import update

from api.ids import utcnow
from api.jobs.tables import WORKERS as W
from api.logging_setup import ContextFilter, TextFormatter
from protocol.states import LaneKind
from tests.factories import claim, make_user, submit


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(ContextFilter())  # what the server's handler does (api.logging_setup)
    caplog.set_level(logging.INFO, logger="morag")
    return caplog


def _about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_lease_expiry_line_carries_the_job_id(store, lines) -> None:
    alice, _ = await make_user(store.engine, "alice")
    store.settings.lease_s = 0.2
    store.settings.max_attempts = 2
    job = await submit(store, alice)
    await claim(store, alice, "w1")
    await asyncio.sleep(0.3)
    assert await store.jobs.release_expired() == 1
    (first,) = _about(lines, "expired")
    assert first.task_id == job and job in first.getMessage() and "queued again" in first.getMessage()
    assert f"[task={job}]" in TextFormatter().format(first)

    await claim(store, alice, "w2")  # the last attempt expires too: dead
    await asyncio.sleep(0.3)
    assert await store.jobs.release_expired() == 1
    last = _about(lines, "expired")[-1]
    assert last.task_id == job and last.getMessage().endswith("dead")
    assert all(r.task_id == job for r in _about(lines, job))


async def test_fallback_lines_carry_the_job_id(store, lines) -> None:
    alice, _ = await make_user(store.engine, "alice")
    store.settings.fallback_after_s = 3600
    store.settings.shared_fallback_after_s = 3600
    await claim(store, alice, "gpu-box", lanes=(LaneKind.gpu,), content_types=("audio",))
    job = await submit(store, alice, "audio", LaneKind.gpu)
    async with store.engine.begin() as conn:  # the GPU box was last seen long ago
        await conn.execute(update(W).values(last_seen_at=utcnow() - timedelta(hours=1)))
    assert await store.jobs.sweep_fallback() == 2
    records = _about(lines, "fallback now")
    assert len(records) == 2 and {r.task_id for r in records} == {job}
