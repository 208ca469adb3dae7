"""``db.dispose``: no SQLite connection thread outlives the event loop of its engine.

A task cancelled while its connection opens (a background loop stopped at shutdown) leaves the
aiosqlite thread running past ``engine.dispose()``; when the loop closed first, the thread died with
"Event loop is closed", which pytest reported as an error of whichever test ran next.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from api import db


def test_no_connection_thread_outlives_the_loop(tmp_path: Path) -> None:
    errors: list[BaseException | None] = []

    async def cancel_while_connecting(path: Path) -> None:
        engine = db.make_engine(f"sqlite+aiosqlite:///{path}")

        async def query() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("select 1"))

        task = asyncio.create_task(query())
        await asyncio.sleep(0)  # the connection is opening in its thread
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await db.dispose(engine)

    previous = threading.excepthook

    def hook(args: Any) -> None:
        errors.append(args.exc_value)

    threading.excepthook = hook
    try:
        for i in range(30):
            asyncio.run(cancel_while_connecting(tmp_path / f"{i}.db"))  # closes its loop at once
        time.sleep(0.3)
    finally:
        threading.excepthook = previous
    assert errors == []


def test_app_shutdown_leaves_no_connection_thread_behind(tmp_path: Path) -> None:
    """The server's lifespan stops its background loops mid-query and disposes with ``db.dispose``."""
    from api.app import create_app
    from api.settings import Settings

    settings = Settings(
        data_dir=tmp_path, secret_key="s", reaper_interval_s=0.001, webhook_sweep_interval_s=0.001
    )
    db.upgrade_sync(settings.resolved_database_url())
    errors: list[BaseException | None] = []

    async def start_and_stop(pause: float) -> None:
        app = create_app(settings, run_migrations=False)
        async with app.router.lifespan_context(app):
            await asyncio.sleep(pause)  # the background loops are at work

    previous = threading.excepthook

    def hook(args: Any) -> None:
        errors.append(args.exc_value)

    threading.excepthook = hook
    try:
        for i in range(20):
            asyncio.run(start_and_stop(0.002 * (i % 5)))
        time.sleep(0.3)
    finally:
        threading.excepthook = previous
    assert errors == []
