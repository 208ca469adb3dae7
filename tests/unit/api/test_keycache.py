"""The key cache: one lookup for many requests presenting the same uncached key at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api import keycache
from api.keycache import KeyCache
from api.keystore import Principal, Scope

WHO = Principal(key_id="k1", user_id=1, user_name="alice", scope=Scope.worker)


class FakeLookup:
    """Stands in for the database lookup: counts calls, answers when released."""

    def __init__(self, answer: Principal | None = WHO, error: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.answer, self.error = answer, error

    async def __call__(self, engine: Any, key: str) -> Principal | None:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def lookup(monkeypatch: pytest.MonkeyPatch) -> FakeLookup:
    fake = FakeLookup()
    monkeypatch.setattr(keycache, "authenticate", fake)
    return fake


async def test_requests_presenting_one_uncached_key_at_once_share_one_lookup(lookup: FakeLookup) -> None:
    cache = KeyCache(engine=None, ttl_s=1.0)  # type: ignore[arg-type]
    callers = [asyncio.create_task(cache.authenticate("mrg_same")) for _ in range(200)]
    await asyncio.sleep(0.01)
    lookup.release.set()
    assert await asyncio.gather(*callers) == [WHO] * 200
    assert lookup.calls == 1
    assert await cache.authenticate("mrg_same") == WHO and lookup.calls == 1  # cached now


async def test_a_failed_shared_lookup_fails_every_waiter_and_is_not_kept(lookup: FakeLookup) -> None:
    cache = KeyCache(engine=None, ttl_s=1.0)  # type: ignore[arg-type]
    lookup.error = ConnectionError("database down")
    callers = [asyncio.create_task(cache.authenticate("mrg_same")) for _ in range(5)]
    await asyncio.sleep(0.01)
    lookup.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and lookup.calls == 1
    lookup.error = None
    assert await cache.authenticate("mrg_same") == WHO and lookup.calls == 2  # looked up again


async def test_a_caller_that_leaves_does_not_cancel_the_lookup_others_wait_for(lookup: FakeLookup) -> None:
    cache = KeyCache(engine=None, ttl_s=1.0)  # type: ignore[arg-type]
    first = asyncio.create_task(cache.authenticate("mrg_same"))
    second = asyncio.create_task(cache.authenticate("mrg_same"))
    await asyncio.sleep(0.01)
    first.cancel()  # its client hung up
    await asyncio.sleep(0.01)
    lookup.release.set()
    assert await second == WHO and lookup.calls == 1
    assert first.cancelled()


async def test_an_unknown_key_is_never_cached(lookup: FakeLookup) -> None:
    cache = KeyCache(engine=None, ttl_s=1.0)  # type: ignore[arg-type]
    lookup.answer = None
    lookup.release.set()
    assert await cache.authenticate("mrg_nope") is None
    assert await cache.authenticate("mrg_nope") is None
    assert lookup.calls == 2


async def test_a_cached_key_is_looked_up_again_after_the_ttl(lookup: FakeLookup) -> None:
    cache = KeyCache(engine=None, ttl_s=0.05)  # type: ignore[arg-type]
    lookup.release.set()
    assert await cache.authenticate("mrg_same") == WHO
    assert await cache.authenticate("mrg_same") == WHO and lookup.calls == 1
    await asyncio.sleep(0.06)
    assert await cache.authenticate("mrg_same") == WHO and lookup.calls == 2  # a revocation shows
