"""Database engine, transactions and migrations (SQLite embedded default or PostgreSQL)."""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.util.concurrency import greenlet_spawn

ROOT = Path(__file__).resolve().parent.parent
#: PostgreSQL advisory lock held while migrating (alembic/env.py): any number of processes may start
#: together on a fresh database. The number is arbitrary but fixed ("morag" in ASCII).
MIGRATION_LOCK_KEY = 0x6D6F726167
# The worker thread of every aiosqlite connection an engine opened (see ``dispose``).
_SQLITE_THREADS: weakref.WeakKeyDictionary[Engine, list[threading.Thread]] = weakref.WeakKeyDictionary()


# Every PostgreSQL session of the server:
# - a transaction left open is ended after 30 s;
# - each statement is planned for its own values. asyncpg prepares every statement, and after five
#   runs PostgreSQL may switch a prepared statement to a generic plan, one for any values. The
#   claim and completion statements sent on a connection kept between uses (DirectPool) went that
#   way: PostgreSQL then spent 1.2-2.4 ms of CPU per job on them against 0.4-0.6 with a plan per
#   run (bench/http_costs.py, "claim 8 carrying 8 results", stop 28). The queue's statements are
#   small and planned in well under a millisecond; a plan blind to the lanes, times and states
#   asked for can read far more of the table than the one for the values at hand.
_PG_SESSION = {"idle_in_transaction_session_timeout": "30000", "plan_cache_mode": "force_custom_plan"}


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    if url.startswith("sqlite"):
        # One connection: transactions queue in-process instead of spinning on SQLite's lock.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
        threads = _SQLITE_THREADS.setdefault(engine.sync_engine, [])

        def _open(*args: Any, **kw: Any) -> Any:
            conn = _one_hop_connection(*args, **kw)
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
        connect_args={"server_settings": _PG_SESSION},
    )


_BEGIN = "BEGIN IMMEDIATE"  # every SQLite transaction's start (``make_engine``)


class _Cursor:
    """A cursor SQLAlchemy's aiosqlite adapter can drive, with ONE trip to the connection's thread
    per statement: the sqlite3 cursor is opened, run, read to the end and closed in that one call.

    aiosqlite's own cursor makes a trip to its thread for each step (open, execute, fetchall,
    close: four per statement that returns rows), each a queue hand-off, a thread wake-up and a
    ``call_soon_threadsafe`` back; a claim on SQLite was nine such trips (docs/benchmarks.md,
    stop 24). The adapter reads every row of a statement at once anyway (no server-side cursors
    here), so nothing is held longer than before; a statement's rows are read before its
    ``rowcount`` is taken, which is then final (an ``UPDATE ... RETURNING`` counts its rows as
    they are read).

    ``BEGIN IMMEDIATE`` makes no trip of its own: it runs in the trip of the transaction's first
    statement, just before it, so the write lock is still taken before anything is read or
    written (and a busy database still fails the transaction before its first statement runs).
    A transaction that ran no statement commits or rolls back without a trip."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._rows: collections.deque[Any] = collections.deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def __await__(self) -> Any:  # ``await conn.cursor()`` as with aiosqlite
        return self.__aenter__().__await__()

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _run(self, sql: str, parameters: Any, many: bool) -> tuple[Any, Any, int, int | None]:
        """In the connection's thread: the statement run and read; (rows, description, rowcount,
        lastrowid)."""
        cur = self._conn._begun().cursor()
        try:
            if many:
                cur.executemany(sql, parameters)
            else:
                cur.execute(sql, parameters)
            rows = cur.fetchall() if cur.description else ()
            return rows, cur.description, cur.rowcount, cur.lastrowid
        finally:
            cur.close()

    async def _go(self, sql: str, parameters: Any, many: bool) -> _Cursor:
        rows, self.description, self.rowcount, self.lastrowid = await self._conn._execute(
            self._run, sql, parameters, many
        )
        self._rows = collections.deque(rows)
        return self

    async def execute(self, sql: str, parameters: Any = ()) -> _Cursor:
        if sql == _BEGIN and not parameters:  # taken with the transaction's first statement
            self._conn._begin_pending = True
            self._rows.clear()
            self.description, self.rowcount, self.lastrowid = None, -1, None
            return self
        return await self._go(sql, () if parameters is None else parameters, False)

    async def executemany(self, sql: str, parameters: Any) -> _Cursor:
        return await self._go(sql, parameters, True)

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]

    async def fetchall(self) -> list[Any]:
        rows, self._rows = list(self._rows), collections.deque()
        return rows

    async def close(self) -> None:
        self._rows.clear()


def _one_hop_connection(*args: Any, **kw: Any) -> Any:
    """An aiosqlite connection (its thread, commit, rollback and close as they are) whose cursors
    make one trip to that thread per statement (:class:`_Cursor`). ``args``/``kw``: sqlite3.connect's,
    as SQLAlchemy's dialect passes them to ``aiosqlite.connect``."""
    return _one_hop_class()(functools.partial(sqlite3.connect, *args, **kw), 64)


@functools.cache
def _one_hop_class() -> type:
    import aiosqlite

    class OneHopConnection(aiosqlite.Connection):
        _begin_pending = False  # BEGIN IMMEDIATE asked for, to be run with the next statement

        def cursor(self) -> Any:
            return _Cursor(self)

        async def run_many(self, sql: str, arg_sets: list[tuple[Any, ...]]) -> list[list[Any]]:
            """``sql`` once per argument set, all in ONE trip to the thread; each run's rows."""
            return await self._execute(self._run_many, sql, arg_sets)  # type: ignore[no-any-return,no-untyped-call]

        def _begun(self) -> sqlite3.Connection:
            """In the thread, before a statement: the pending BEGIN IMMEDIATE run first (the write
            lock taken, as it would have been on its own); the sqlite3 connection."""
            conn = self._conn
            if self._begin_pending:
                self._begin_pending = False
                conn.execute(_BEGIN)
            return conn

        def _run_many(self, sql: str, arg_sets: list[tuple[Any, ...]]) -> list[list[Any]]:
            out = []
            cur = self._begun().cursor()
            try:
                for args in arg_sets:
                    cur.execute(sql, args)
                    out.append(cur.fetchall())
            finally:
                cur.close()
            return out

        async def commit(self) -> None:
            if self._begin_pending:  # no statement since BEGIN: nothing to commit
                self._begin_pending = False
                return
            await super().commit()

        async def rollback(self) -> None:
            # The pool rolls back every connection it gets back, most of them committed already:
            # with no transaction open there is nothing to undo and no trip to make.
            self._begin_pending = False
            conn = self._connection
            if conn is not None and not conn.in_transaction:
                return
            await super().rollback()

    return OneHopConnection


class DirectPool:
    """PostgreSQL: the engine's connections, as asyncpg connections, for the statements of the hot
    path that run alone (a submit's insert, a claim, a batch of completions; ``api.jobs.base``),
    kept checked out of the engine's pool between uses.

    Through SQLAlchemy each such call checked a connection out of the pool and in again: the
    AsyncConnection, greenlet switches, the pool's events, the isolation level set to AUTOCOMMIT
    and back. Measured in-process, a submit cost 0.54-0.71 ms of server CPU that way and 0.33-0.42
    on a connection held like this (docs/benchmarks.md, stop 28). Here a use takes an idle
    connection from a list and puts it back.

    - They stay the engine's connections: its pool still bounds how many there are in all, they
      were opened with its settings and codecs, and :func:`dispose` gives them back first.
    - A statement sent this way runs on its own, committed by PostgreSQL as it ends (no
      transaction is open on them: the pool hands out none, and nothing here begins one).
    - A use that ends with an error of the database itself (a value refused, a constraint) leaves
      the connection fine and it is used again. Anything else (a lost connection, a cancellation
      midway, an unknown error) closes it and tells the engine's pool, which opens a new one.
    - At most ``keep`` wait idle; a connection held ``recycle_s`` goes back to the engine's pool,
      whose ``pool_recycle`` then applies as to any other.
    """

    def __init__(self, engine: AsyncEngine, keep: int = 4, recycle_s: float = 300.0) -> None:
        self.engine = engine
        self.keep = keep
        self.recycle_s = recycle_s
        self._idle: list[tuple[float, PoolProxiedConnection]] = []
        self.closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the engine, for statements that each run on their own."""
        if self._idle:
            since, fairy = self._idle.pop()
        else:
            since, fairy = time.monotonic(), await self.engine.raw_connection()
        fine = False
        try:
            yield fairy.driver_connection
            fine = True
        except sa_exc.DBAPIError as exc:
            fine = not exc.connection_invalidated  # the database refused the statement
            raise
        finally:
            await self._put_back(since, fairy, fine)

    async def _put_back(self, since: float, fairy: PoolProxiedConnection, fine: bool) -> None:
        driver = fairy.driver_connection
        if not fine or driver is None or driver.is_closed():
            if driver is not None:
                driver.terminate()  # at once: it may be midway through a statement
            await greenlet_spawn(fairy.invalidate)
        elif self.closed or len(self._idle) >= self.keep or time.monotonic() - since > self.recycle_s:
            await greenlet_spawn(fairy.close)  # back to the engine's pool
        else:
            self._idle.append((since, fairy))

    async def close(self) -> None:
        """Give the idle connections back to the engine's pool; those in use go back as they end."""
        self.closed = True
        idle, self._idle = self._idle, []
        for _, fairy in idle:
            await greenlet_spawn(fairy.close)


# One DirectPool per engine pool (``engine.dispose()`` replaces the pool, so a new one follows it).
_DIRECT: weakref.WeakKeyDictionary[Pool, DirectPool] = weakref.WeakKeyDictionary()


def direct_pool(engine: AsyncEngine) -> DirectPool:
    """The :class:`DirectPool` of ``engine``'s pool (made on first use)."""
    pool = engine.sync_engine.pool
    found = _DIRECT.get(pool)
    if found is None:
        found = _DIRECT[pool] = DirectPool(engine)
    return found


async def dispose(engine: AsyncEngine, timeout: float = 5.0) -> None:
    """Its :class:`DirectPool`'s connections back, ``engine.dispose()``, then (SQLite) wait until
    its connections' threads have ended.

    A task cancelled while its connection opens or queries (a background loop stopped at shutdown)
    leaves that aiosqlite connection's thread running after ``dispose`` returns; the thread then
    reports to the event loop. Were the loop closed by then (``asyncio.run`` returning, a test
    ending), the thread dies with "Event loop is closed". Waiting here, loop still running, prevents it.
    """
    direct = _DIRECT.pop(engine.sync_engine.pool, None)
    if direct is not None:
        await direct.close()
    await engine.dispose()
    threads = _SQLITE_THREADS.get(engine.sync_engine, [])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Polling: a thread's end has no event to await, and joining it would block the loop it needs.
    while any(t.is_alive() for t in threads) and loop.time() < deadline:  # noqa: ASYNC110
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
