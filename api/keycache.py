"""Authenticated keys cached in the process for a moment: no database transaction per request.

A key is looked up at most once per ``key_cache_ttl_s`` (default 1 s) per process, so a key
revoked by any process (the CLI, another server) stops working here within that time. Only keys
that authenticated are cached (an unknown key is looked up every time), by their SHA-256, never
the key itself; the cache is bounded.

Requests that present the same uncached key at once share one lookup: 1,000 workers of one key
coming back after a restart were 1,000 lookups (and 1,000 ``last_used_at`` writes), which on
SQLite queued behind one writer for ~20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from api.keystore import Principal, authenticate, hash_key

MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, engine: AsyncEngine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lookups: dict[str, asyncio.Task[Principal | None]] = {}  # by digest, while in flight

    async def authenticate(self, key: str) -> Principal | None:
        """The key's principal, from the cache while it is younger than the TTL."""
        digest = hash_key(key)
        hit = self._entries.get(digest)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(key, digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._looked_up(digest, done))
        # Shielded: a caller that goes away does not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def _looked_up(self, digest: str, done: asyncio.Task[Principal | None]) -> None:
        if self._lookups.get(digest) is done:
            del self._lookups[digest]
        if not done.cancelled():
            with contextlib.suppress(Exception):
                done.exception()  # retrieved: a failure nobody waited for is not logged as lost

    async def _lookup(self, key: str, digest: str) -> Principal | None:
        began = time.monotonic()  # the answer is as old as the lookup's start
        who = await authenticate(self.engine, key)
        if who is None:
            self._entries.pop(digest, None)
            return None
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # a bound, not a policy: refilled within a TTL
            self._entries[digest] = (began, who)
        return who
