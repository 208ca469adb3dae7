"""What every part of the job store shares: its engine, settings and notifier, and the lease fence.

Every change of a leased job (heartbeat, complete, fail, give-back, artifact admission) goes
through :meth:`StoreBase._guarded_update` (or its row-locking twin :meth:`StoreBase._guarded_row`):
``WHERE id = :job AND lease_token = :token AND worker_key_id = :key AND state = 'running' AND
stage = 'process'``. Zero rows is a domain error, explained by :meth:`StoreBase._refusal`: the job
was canceled (only told to the lease's own key), else a stale lease. Another key presenting a valid
token gets exactly the stale-lease answer, so a leaked token tells its holder nothing.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, bindparam, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ClauseElement

from api.db import direct_pool
from api.errors import JobCanceledError, MoragError, StaleLease
from api.ids import utcnow
from api.jobs.records import JobState, Lease, TaskStage
from api.jobs.tables import JOBS as J
from api.jobs.tables import WORKERS as W
from api.keystore import Principal
from api.notifier import UNKNOWN, Notifier
from api.settings import Settings

# Presence is refreshed at most this often per worker and process (a long-polling claim re-runs
# every second, heartbeats come per job): the presence TTL is a minute, so this costs nothing in
# accuracy and saves a write on the hot path.
PRESENCE_REFRESH_S = 5.0
# A worker this process has written before, with the same lanes and types, only moves its
# last_seen_at forward: those renewals wait in memory and are written together this often (one
# statement for every worker that re-polled meanwhile), not one write transaction per re-poll.
PRESENCE_FLUSH_S = 1.0
ONLINE_CACHE_S = 1.0

QUEUED, RUNNING = JobState.queued.value, JobState.running.value

_FENCE: ColumnElement[bool] = and_(
    J.c.id == bindparam("fence_job", type_=J.c.id.type),
    J.c.lease_token == bindparam("fence_token", type_=J.c.lease_token.type),
    J.c.worker_key_id == bindparam("fence_key", type_=J.c.worker_key_id.type),
    J.c.state == RUNNING,
    J.c.stage == TaskStage.process.value,
)


def guarded_update(values: dict[str, Any], returning: Sequence[Any] = (J.c.id,)) -> Update:
    """The lease-fenced ``UPDATE`` setting ``values``, returning ``returning``. A statement run per
    job is built once and kept: building it and its cache key costs more than SQLite needs to run it."""
    return update(J).where(_FENCE).values(**values).returning(*returning)


def fence_params(lease: Lease) -> dict[str, Any]:
    return {"fence_job": lease.job_id, "fence_token": lease.token, "fence_key": lease.key_id}


_NEEDED = object()  # a parameter the caller must give


def _positional(compiled: Any, dialect: Dialect) -> tuple[tuple[str, Any], ...]:
    """Per placeholder of ``compiled`` (in order), the parameter's name and the value the statement
    itself gives it (a literal such as ``attempt + 1``), else ``_NEEDED``."""
    names = getattr(compiled, "positiontup", None)  # SQLCompiler: the bind names in placeholder order
    if names is None:
        raise TypeError(f"{dialect.name} does not compile to positional parameters")
    if "POSTCOMPILE" in compiled.string:  # an expanding IN list: its text depends on the values
        raise TypeError("a statement sent by the driver takes arrays (= ANY), not expanding IN lists")
    binds = compiled.binds
    return tuple(
        (n, _NEEDED if binds[n].required or binds[n].callable is not None else binds[n].value) for n in names
    )


@functools.lru_cache(maxsize=64)
def _driver_sql(stmt: ClauseElement, dialect: Dialect) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """``stmt`` as asyncpg's SQL text ($1, $2, ...) and, per position, the parameter's name and
    its value from the statement or ``_NEEDED`` (:func:`_positional`). Compiled once per statement
    object (the hot statements are built once and kept)."""
    compiled = stmt.compile(dialect=dialect)
    return compiled.string, _positional(compiled, dialect)


async def execute_direct(engine: AsyncEngine, stmt: ClauseElement, params: dict[str, Any]) -> None:
    """PostgreSQL: run one statement that returns no rows, on its own, sent by asyncpg itself on a
    connection of the engine's :class:`~api.db.DirectPool`.

    SQLAlchemy's execution path (parameter processing, its cursor adapter, the result object)
    cost a submit's insert 0.65 ms of CPU where the same statement sent by asyncpg costs 0.21
    (docs/benchmarks.md, stop 21); its checkout and check-in of a pooled connection another
    ~0.2 (stop 28). The connection is still one of the engine's pool. asyncpg's errors become
    SQLAlchemy's, as its dialect would raise them, so the server answers them alike
    (api/errors.py): a lost connection is closed (the pool opens a new one) and answered 503, a
    value the database refuses 422, anything else 500.
    """
    await _direct(engine, stmt, params, fetch=False)


async def fetch_direct(engine: AsyncEngine, stmt: ClauseElement, params: dict[str, Any]) -> list[Any]:
    """Like :func:`execute_direct` for a statement that returns rows: each row with its columns
    as attributes, as SQLAlchemy's rows have them (values as asyncpg decodes them; JSON columns
    through the codec SQLAlchemy's dialect installs on each connection, so as Python objects)."""
    records = await _direct(engine, stmt, params, fetch=True)
    return [SimpleNamespace(**dict(r)) for r in records]


async def _direct(engine: AsyncEngine, stmt: ClauseElement, params: dict[str, Any], *, fetch: bool) -> Any:
    async with direct_pool(engine).connection() as driver:
        return await _send(driver, stmt, engine.dialect, params, fetch)


async def _send(
    driver: Any, stmt: ClauseElement, dialect: Dialect, params: dict[str, Any], fetch: bool
) -> Any:
    import asyncpg

    sql, names = _driver_sql(stmt, dialect)
    args = [params[n] if n in params or fixed is _NEEDED else fixed for n, fixed in names]
    try:
        return await (driver.fetch(sql, *args) if fetch else driver.execute(sql, *args))
    except (
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # shutdown, crash recovery
        OSError,
    ) as exc:  # the DirectPool closes the connection
        raise sa_exc.OperationalError(sql, None, exc, connection_invalidated=True) from exc
    except asyncpg.exceptions.DataError as exc:
        raise sa_exc.DataError(sql, None, exc) from exc
    except asyncpg.PostgresError as exc:
        raise sa_exc.DBAPIError(sql, None, exc) from exc


@functools.lru_cache(maxsize=64)
def _sqlite_sql(
    stmt: ClauseElement, dialect: Dialect
) -> tuple[str, tuple[tuple[str, Any, Any], ...], tuple[tuple[str, Any], ...]]:
    """``stmt`` as sqlite3's SQL text (``?`` placeholders); per placeholder its name, the value the
    statement gives it (else ``_NEEDED``) and the type's bind processor (JSON to text, datetimes to
    SQLite's format, as SQLAlchemy would send them); per returned column its name and result
    processor. Compiled once per statement object."""
    compiled: Any = stmt.compile(dialect=dialect)
    procs = compiled._bind_processors
    params = tuple((n, fixed, procs.get(n)) for n, fixed in _positional(compiled, dialect))
    columns = tuple(
        (c.keyname, c.type._cached_result_processor(dialect, None)) for c in compiled._result_columns
    )
    return compiled.string, params, columns


async def run_many_direct(
    conn: AsyncConnection, stmt: ClauseElement, param_sets: list[dict[str, Any]]
) -> list[list[Any]]:
    """SQLite: ``stmt`` once per parameter set in the caller's transaction, all in one trip to the
    connection's thread (api/db.py); per set its rows, each with its columns as attributes and
    values as SQLAlchemy would return them. Through SQLAlchemy each run was a trip of its own and
    ~0.2 ms of Python (a completion batch of 12 jobs: 12 trips, then the commit's).
    sqlite3's errors become SQLAlchemy's, as its dialect would raise them (api/errors.py)."""
    sql, binds, columns = _sqlite_sql(stmt, conn.dialect)
    arg_sets = []
    for params in param_sets:
        args = []
        for name, fixed, proc in binds:
            value = params[name] if name in params or fixed is _NEEDED else fixed
            args.append(proc(value) if proc is not None else value)
        arg_sets.append(tuple(args))
    driver: Any = (await conn.get_raw_connection()).driver_connection
    try:
        found = await driver.run_many(sql, arg_sets)
    except sqlite3.Error as exc:
        raise sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

    def record(row: Any) -> SimpleNamespace:
        return SimpleNamespace(
            **{name: proc(v) if proc is not None else v for (name, proc), v in zip(columns, row, strict=True)}
        )

    return [[record(row) for row in rows] for rows in found]


def owner_is(user_id: int | None) -> ColumnElement[bool]:
    """Rows of this user (anonymous jobs: user_id NULL)."""
    return J.c.user_id.is_(None) if user_id is None else J.c.user_id == user_id


class StoreBase:
    """Holds the engine, the settings and the notifier once for every part of the store."""

    def __init__(self, engine: AsyncEngine, settings: Settings, notifier: Notifier) -> None:
        self.engine = engine
        self.settings = settings
        self.notifier = notifier
        self._presence: dict[tuple[str | None, str, tuple[Any, ...]], float] = {}
        self._renewals: dict[tuple[str | None, str], datetime] = {}
        # One statement that is atomic on its own needs no BEGIN/COMMIT round trips (PostgreSQL):
        # the same pool, without the transaction the driver would open.
        self.autocommit: AsyncEngine = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Who is online, as submits see it (fallback times, the "nobody can take it" note): read at
        # most every ONLINE_CACHE_S per user and process, and forgotten when this process writes a
        # worker's presence. Presence itself is refreshed every PRESENCE_REFRESH_S and lives
        # MORAG_PRESENCE_TTL_S, so this adds at most ONLINE_CACHE_S to what a submit already sees.
        self._online: dict[int | None, tuple[float, list[dict[str, Any]]]] = {}

    def _presence_fresh_beat(self, key_id: str | None, worker_id: str) -> bool:
        """Like :meth:`_presence_fresh` for heartbeats (they only refresh ``last_seen_at``)."""
        key = (key_id, worker_id, ("heartbeat",))
        now = time.monotonic()
        if now - self._presence.get(key, -PRESENCE_REFRESH_S) < PRESENCE_REFRESH_S:
            return True
        self._presence[key] = now
        return False

    def _presence_due(self, who: Principal, worker_id: str, shape: tuple[Any, ...], now: datetime) -> bool:
        """True when this worker's row must be written with the claim: the first claim this
        process sees from it, or one with other lanes or types. A known worker whose row is
        merely due for a refresh is queued for :meth:`flush_presence` instead (False)."""
        key = (who.key_id, worker_id, shape)
        mono = time.monotonic()
        last = self._presence.get(key)
        if last is not None and mono - last < PRESENCE_REFRESH_S:
            return False
        if len(self._presence) > 10_000:  # a bound, not a cache policy: workers come and go
            self._presence.clear()
        self._presence[key] = mono
        if last is not None:
            self._renewals[(who.key_id, worker_id)] = now
            return False
        self._online.clear()  # this worker's row is about to change: submits read it again
        return True

    async def flush_presence(self) -> int:
        """Write the queued presence renewals in one statement; how many there were."""
        if not self._renewals:
            return 0
        batch, self._renewals = self._renewals, {}
        stmt = (
            update(W)
            .where(W.c.key_id == bindparam("b_key"), W.c.worker_id == bindparam("b_worker"))
            .values(last_seen_at=bindparam("b_seen"))
        )
        rows = [{"b_key": k, "b_worker": w, "b_seen": seen} for (k, w), seen in batch.items()]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(stmt, rows)
        except BaseException:
            for key, seen in batch.items():  # kept for the next flush: a renewal is never dropped
                self._renewals.setdefault(key, seen)
            raise
        return len(batch)

    def _live_since(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.settings.presence_ttl_s)

    async def release_leases(self, leases: list[Lease]) -> int:
        """:meth:`release_claimed` by the leases themselves (a hand-off whose claim had left)."""
        now = utcnow()
        values: dict[str, Any] = {
            "state": QUEUED,
            "attempt": J.c.attempt - 1,
            "lease_token": None,
            "lease_expires_at": None,
            "worker_id": None,
            "claim_id": None,
            "run_after": now,
            "updated_at": now,
            "progress_message": "released: the worker left before it got the job",
        }
        count = 0
        async with self.engine.begin() as conn:
            for lease in leases:
                if await self._guarded_update(conn, lease, values) is not None:
                    count += 1
            if count:
                await self.notifier.publish(conn, UNKNOWN)
        if count:
            self.notifier.wake(UNKNOWN)
        return count

    async def _guarded_update(
        self,
        conn: AsyncConnection,
        lease: Lease,
        values: dict[str, Any],
        returning: Sequence[Any] = (J.c.id,),
        params: dict[str, Any] | None = None,
    ) -> Row[Any] | None:
        """The one lease-fenced ``UPDATE``: the changed row, or None when the fence refused it."""
        stmt = guarded_update(values, returning)
        result = await conn.execute(stmt, {**fence_params(lease), **(params or {})})
        return result.first()

    async def _guarded_row(self, conn: AsyncConnection, lease: Lease, *cols: Any) -> Row[Any]:
        """The leased row, locked in the caller's transaction; raises the refusal when fenced off."""
        stmt = select(*cols).where(_FENCE).with_for_update()
        row = (await conn.execute(stmt, fence_params(lease))).first()
        if row is None:
            raise await self._refusal(conn, lease)
        return row

    async def _refusal(self, conn: AsyncConnection, lease: Lease) -> MoragError:
        """Why the fence refused: canceled (told only to the lease's own key) or a stale lease."""
        row = (
            await conn.execute(
                select(J.c.state, J.c.lease_token, J.c.worker_key_id).where(J.c.id == lease.job_id)
            )
        ).first()
        if row is not None and row.lease_token == lease.token and row.worker_key_id == lease.key_id:
            if row.state == JobState.canceled:
                return JobCanceledError()
        return StaleLease()
