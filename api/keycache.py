"""Authenticated keys cached in the process for a moment: no database transaction per request.

A key is looked up at most once per ``key_cache_ttl_s`` (default 1 s) per process, so a key
revoked by any process (the CLI, another server) stops working here within that time. Only keys
that authenticated are cached (an unknown key is looked up every time), by their SHA-256, never
the key itself; the cache is bounded.
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from api.keystore import Principal, authenticate, hash_key

MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, engine: AsyncEngine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        """The key's principal, from the cache while it is younger than the TTL."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        who = await authenticate(self.engine, key)
        if who is None:
            self._entries.pop(digest, None)
            return None
        if self.ttl_s > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # a bound, not a policy: refilled within a TTL
            self._entries[digest] = (now, who)
        return who
