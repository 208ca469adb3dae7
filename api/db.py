"""Database engine, transactions and migrations (SQLite embedded default or PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
#: PostgreSQL advisory lock held while migrating (alembic/env.py): any number of processes may start
#: together on a fresh database. The number is arbitrary but fixed ("morag" in ASCII).
MIGRATION_LOCK_KEY = 0x6D6F726167
# The worker thread of every aiosqlite connection an engine opened (see ``dispose``).
_SQLITE_THREADS: weakref.WeakKeyDictionary[Engine, list[threading.Thread]] = weakref.WeakKeyDictionary()


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    if url.startswith("sqlite"):
        # One connection: transactions queue in-process instead of spinning on SQLite's lock.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
        threads = _SQLITE_THREADS.setdefault(engine.sync_engine, [])

        def _open(*args: Any, **kw: Any) -> Any:
            import aiosqlite

            conn = aiosqlite.connect(*args, **kw)
            thread = getattr(conn, "_thread", None)
            if isinstance(thread, threading.Thread):
                thread.daemon = True
                threads[:] = [t for t in threads if t.is_alive()] + [thread]
            return conn

        @event.listens_for(engine.sync_engine, "do_connect")
        def _on_do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            # Every connection's thread, also one whose opening a cancellation cut short.
            cparams["async_creator_fn"] = _open

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Take the write lock up front so two processes never deadlock upgrading a read lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_recycle=1800,  # no pre-ping: it costs a round trip on every checkout of the queue's hot path
        connect_args={"server_settings": {"idle_in_transaction_session_timeout": "30000"}},
    )


async def dispose(engine: AsyncEngine, timeout: float = 5.0) -> None:
    """``engine.dispose()``, then (SQLite) wait until its connections' threads have ended.

    A task cancelled while its connection opens or queries (a background loop stopped at shutdown)
    leaves that aiosqlite connection's thread running after ``dispose`` returns; the thread then
    reports to the event loop. Were the loop closed by then (``asyncio.run`` returning, a test
    ending), the thread dies with "Event loop is closed". Waiting here, loop still running, prevents it.
    """
    await engine.dispose()
    threads = _SQLITE_THREADS.get(engine.sync_engine, [])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(t.is_alive() for t in threads) and loop.time() < deadline:
        await asyncio.sleep(0.005)


def migrations_dir() -> Path:
    """The Alembic scripts: ./alembic in a source checkout, else the copy a wheel installs."""
    for candidate in (ROOT / "alembic", Path(sys.prefix) / "share" / "morag-remote" / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("the database migrations (alembic/) are not installed; reinstall morag-remote")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.attributes["configure_logger"] = False  # logging is api.logging_setup's, never alembic.ini's
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str) -> None:
    """``alembic upgrade head`` for ``url`` (runs its own event loop: call from a thread)."""
    from alembic import command

    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        if path and path != ":memory:":
            db_file = Path(path)
            db_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not db_file.exists():  # created private: keys' hashes, cookies, results live in it
                os.close(os.open(db_file, os.O_CREAT | os.O_WRONLY, 0o600))
    command.upgrade(alembic_config(url), "head")


async def upgrade(url: str) -> None:
    """Migrate the database to head without blocking the running event loop."""
    await asyncio.to_thread(upgrade_sync, url)
