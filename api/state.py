"""What one server process holds, typed, and the dependency routes reach it through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.cookies import CookieSource
from api.events import JobEvents
from api.jobs import JobStore
from api.keycache import KeyCache
from api.notifier import Notifier
from api.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    notifier: Notifier
    secret: bytes
    #: every statement on the jobs, workers and webhook-delivery tables
    jobs: JobStore
    #: publish a job's change to its listeners (indexing, webhooks, metrics, job ends), listed in ``api.app``
    events: JobEvents
    #: users' cookies for the URL jobs a worker claims
    cookies: CookieSource
    #: authenticated keys, cached for ``key_cache_ttl_s``
    keys: KeyCache


def app_state(request: Request) -> AppState:
    """The server's state, from code that has the request."""
    return cast(AppState, request.app.state.morag)


async def get_state(request: Request) -> AppState:
    """The server's state (``Depends(get_state)``). A coroutine on purpose: FastAPI runs a plain
    function dependency in its thread pool, a thread hop on every request."""
    return cast(AppState, request.app.state.morag)
