"""Long-polls end apart (issue [throughput]): workers that started together must not re-poll together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.routes import worker as worker_routes
from api.settings import Settings
from tests.integration.api.conftest import Env, make_settings, running_env

CLAIM = {"worker_id": "w", "lanes": ["cpu"], "content_types": ["echo"]}


class _Draw:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_poll_wait_ends_within_the_last_spread_of_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(claim_wait_max_s=20, claim_wait_spread=0.25)
    monkeypatch.setattr(worker_routes, "random", _Draw(0.0))
    assert worker_routes.poll_wait(10, s) == 10
    assert worker_routes.poll_wait(99, s) == 20  # never past the server's longest
    monkeypatch.setattr(worker_routes, "random", _Draw(0.999))
    assert worker_routes.poll_wait(10, s) == pytest.approx(7.5, abs=0.01)
    assert worker_routes.poll_wait(10, Settings(claim_wait_spread=0)) == 10
    assert Settings().claim_wait_spread == 0.25


@pytest.fixture
async def env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path, database_url=database_url, claim_wait_max_s=5, claim_wait_spread=0.5)
    async with running_env(settings) as e:
        yield e


async def test_an_idle_long_poll_ends_early_by_its_draw(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_routes, "random", _Draw(1.0))  # the earliest end: half of 2 s
    t0 = time.monotonic()
    resp = await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 2})
    took = time.monotonic() - t0
    assert resp.status_code == 204, resp.text
    assert 0.9 <= took < 1.8, took
    monkeypatch.setattr(worker_routes, "random", _Draw(0.0))  # the latest end: the whole wait
    t0 = time.monotonic()
    resp = await env.client.post("/worker/claim", headers=env.worker, json={**CLAIM, "wait_s": 1})
    assert resp.status_code == 204, resp.text
    assert time.monotonic() - t0 >= 0.95
