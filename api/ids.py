"""Ids and the clock."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


_last_us = 0
_lock = threading.Lock()


def new_id() -> str:
    """32 hex chars, time-ordered (microseconds first), so ordering by id is FIFO.

    Strictly increasing within a process, even for ids made in the same microsecond (a batch).
    """
    global _last_us
    with _lock:
        _last_us = max(time.time_ns() // 1000, _last_us + 1)
        stamp = _last_us
    return f"{stamp:014x}{secrets.token_hex(9)}"


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
