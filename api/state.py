"""What one server process holds: settings, database engine, notifier, hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from api.notifier import Notifier
from api.settings import Settings

CookieLookup = Callable[[int, str], Awaitable[str | None]]


async def _nothing(job_id: str) -> None:
    return None


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    notifier: Notifier
    secret: bytes
    #: cookies.txt of a user for a URL, handed to the worker that claims the job
    cookie_lookup: CookieLookup | None = None
    #: called after a job changed state through the API (webhooks, indexing, file retention)
    on_job_changed: Callable[[str], Awaitable[None]] = field(default=_nothing)
