"""SQLite through aiosqlite: one trip to the connection's thread per statement (api/db.py, ``_Cursor``),
with the rows, counts and errors SQLAlchemy gets from aiosqlite's own cursor."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import db
from tests.factories import sqlite_trips


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}")
    async with eng.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield eng
    await db.dispose(eng)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return sqlite_trips(monkeypatch)


async def test_a_write_transaction_is_two_trips(engine: AsyncEngine, trips: list[str]) -> None:
    async with engine.begin() as conn:  # a warm connection: opening it is not what is counted
        await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
    trips.clear()
    async with engine.begin() as conn:
        result = await conn.execute(text("UPDATE t SET v = :v WHERE id = 1 RETURNING id, v"), {"v": "b"})
        assert result.all() == [(1, "b")]
    # The UPDATE (BEGIN IMMEDIATE in its trip, then run, read and closed at once) and COMMIT; the
    # pool's reset of a connection with no transaction open makes no trip. aiosqlite's cursor made nine.
    assert len(trips) == 2, trips


async def test_the_write_lock_is_held_from_the_first_statement_on(
    engine: AsyncEngine, tmp_path: Path, trips: list[str]
) -> None:
    """BEGIN IMMEDIATE rides on the first statement's trip, yet a transaction whose first statement
    only reads still holds the write lock until it ends, as BEGIN IMMEDIATE on its own would."""
    other = sqlite3.connect(tmp_path / "trips.db", timeout=0.05, isolation_level=None)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            await conn.execute(text("INSERT INTO t (v) VALUES ('mine')"))
        other.execute("BEGIN IMMEDIATE")  # free again once committed
        other.execute("ROLLBACK")
    finally:
        other.close()
    trips.clear()
    async with engine.begin():  # no statement: nothing to begin, commit or reset
        pass
    with pytest.raises(RuntimeError):
        async with engine.begin():
            raise RuntimeError("nothing ran")
    assert trips == []
    async with engine.begin() as conn:  # and the next transaction starts as usual
        await conn.execute(text("INSERT INTO t (v) VALUES ('next')"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all() == ["mine", "next"]


async def test_rows_counts_and_ids_as_sqlalchemy_expects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        ins = await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        assert ins.lastrowid == 1
        many = await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}, {"v": "d"}])
        assert many.rowcount == 3
        ret = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 1 RETURNING id"))
        assert sorted(ret.scalars().all()) == [2, 3, 4]
        assert ret.rowcount == 3  # final: every returned row was read with the statement
        plain = await conn.execute(text("UPDATE t SET v = v || '?' WHERE id > 2"))
        assert plain.rowcount == 2
        rows = await conn.execute(text("SELECT id, v FROM t ORDER BY id"))
        assert rows.keys() == ["id", "v"]
        assert rows.fetchone() == (1, "a")
        assert rows.fetchmany(2) == [(2, "b!"), (3, "c!?")]
        assert rows.fetchall() == [(4, "d!?")]
        assert (await conn.execute(text("SELECT v FROM t WHERE id = 99"))).first() is None
        raw = await conn.get_raw_connection()  # the adapter's cursor over ours
        cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
        await cur.execute("SELECT count(*) FROM t")
        assert await cur.fetchall() == [(4,)]
        assert await cur.fetchall() == []


async def test_a_failed_statement_raises_and_its_transaction_rolls_back(
    engine: AsyncEngine, trips: list[str]
) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('x')"))
            await conn.execute(text("INSERT INTO t (v) VALUES ('x')"))  # UNIQUE
    assert "rollback" in trips  # a transaction was open: the rollback made its trip
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('y')"))
            raise RuntimeError("the caller fails after a write")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0


async def test_a_begin_that_ran_nothing_leaves_no_transaction_behind(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE waits for a statement; a commit or rollback before one drops it, so the
    connection's next statement, outside any transaction, does not open one that nobody ends."""
    conn = await db._one_hop_connection(str(tmp_path / "raw.db"), isolation_level=None)
    try:
        for end in (conn.commit, conn.rollback):
            cur = conn.cursor()
            await cur.execute("BEGIN IMMEDIATE")
            await end()
            await cur.execute("SELECT 1")
            assert await cur.fetchall() == [(1,)]
            assert not conn.in_transaction, end
    finally:
        await conn.close()
