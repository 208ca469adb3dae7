"""Shared fixtures: a migrated database on SQLite and on real PostgreSQL, and a running app.

PostgreSQL: MORAG_TEST_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test).
A template database is migrated once per session; each test gets a fresh copy of it. When
PostgreSQL is unreachable the PostgreSQL variants FAIL (they are part of the contract); set
MORAG_TEST_SKIP_POSTGRES=1 to deselect them explicitly on a machine without it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SYSTEM_TOOLS = {
    "ffmpeg": "ffmpeg",
    "ffprobe": "ffmpeg",
    "espeak-ng": "espeak-ng",
    "tesseract": "tesseract-ocr",
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite needs these tools; say how to install them instead of skipping tests silently."""
    missing = sorted({pkg for tool, pkg in SYSTEM_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise pytest.UsageError(
            f"missing system packages: {' '.join(missing)}; install them with: "
            f"sudo apt-get update && sudo apt-get install -y {' '.join(missing)}"
        )


PG_URL = os.environ.get("MORAG_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
_counter = itertools.count()


def _pg_dsn(url: str, database: str | None = None) -> str:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    if database is not None:
        dsn = dsn.rsplit("/", 1)[0] + "/" + database
    return dsn


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(PG_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head, used as the template of every test database."""
    from api.db import upgrade_sync

    name = f"morag_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    upgrade_sync(PG_URL.rsplit("/", 1)[0] + "/" + name)
    yield name
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _backends() -> list[Any]:
    params: list[Any] = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get("MORAG_TEST_SKIP_POSTGRES") != "1":
        params.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))
    return params


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database: SQLite in tmp_path, or a copy of the PostgreSQL template."""
    if request.param == "sqlite":
        from api.db import upgrade_sync

        url = f"sqlite+aiosqlite:///{tmp_path / 'morag.db'}"
        upgrade_sync(url)
        yield url
        return
    template = request.getfixturevalue("pg_template")
    name = f"morag_t_{os.getpid()}_{next(_counter)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Store:
    """Direct access to the job store of a test database."""

    engine: Any
    settings: Any
    notifier: Any
    jobs: Any


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    from api.db import dispose, make_engine
    from api.jobs import JobStore
    from api.notifier import Notifier
    from api.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, secret_key="test-secret")
    engine = make_engine(database_url)
    notifier = Notifier()
    jobs = JobStore(engine, settings, notifier)
    yield Store(engine=engine, settings=settings, notifier=notifier, jobs=jobs)
    await dispose(engine)  # waits for SQLite connection threads while the loop still runs
