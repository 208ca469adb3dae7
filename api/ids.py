"""Ids and the clock."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """32 hex chars, time-ordered (microseconds first), so ordering by id is FIFO."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(9)}"


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
