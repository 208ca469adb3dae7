"""Statements sent by the asyncpg driver itself (api.jobs.base): their text and parameters."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import asyncpg

from api.jobs.base import _NEEDED, _driver_sql
from api.jobs.tables import JOBS as J


def test_literals_in_the_statement_keep_their_values_and_the_rest_must_be_given() -> None:
    stmt = update(J).where(J.c.id == bindparam("job")).values(attempt=J.c.attempt + 1, state="running")
    sql, names = _driver_sql(stmt, asyncpg.dialect())
    assert dict(names) == {"state": "running", "attempt_1": 1, "job": _NEEDED}
    assert "$1" in sql and "POSTCOMPILE" not in sql


def test_an_expanding_in_list_is_refused() -> None:
    stmt = select(J.c.id).where(J.c.content_type.in_(bindparam("ctypes", expanding=True)))
    with pytest.raises(TypeError, match="arrays"):
        _driver_sql(stmt, asyncpg.dialect())
