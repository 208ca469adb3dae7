"""One backoff formula on the server (``api.background.backoff_s``), jittered, used by webhooks too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.background import backoff_s
from api.settings import Settings
from api.webhooks import WebhookSender, delivery_jitter


@pytest.mark.parametrize(("failures", "step"), [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)])
def test_backoff_doubles_to_the_cap_with_equal_jitter(failures: int, step: float) -> None:
    assert backoff_s(2.0, 10.0, failures, rand=lambda: 0.0) == step / 2
    assert backoff_s(2.0, 10.0, failures, rand=lambda: 1.0) == step  # never above the cap
    assert backoff_s(2.0, 10.0, failures, rand=lambda: 0.5) == step * 0.75


def test_backoff_is_jittered_by_default() -> None:
    waits = {backoff_s(1.0, 100.0, 3) for _ in range(50)}
    assert len(waits) > 1 and all(2.0 <= w <= 4.0 for w in waits)


async def test_webhook_waits_are_the_shared_backoff_jittered_per_job_and_attempt(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, secret_key="s", webhook_backoff_base_s=1.0, webhook_backoff_max_s=6.0
    )
    sender: Any = WebhookSender(jobs=Any, settings=settings, secret=b"s")  # type: ignore[arg-type]
    try:
        for attempt, step in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0), (8, 6.0)):
            wait = sender._delay("J1", attempt)
            assert wait == backoff_s(1.0, 6.0, attempt, rand=lambda a=attempt: delivery_jitter("J1", a))
            assert step / 2 <= wait <= step
            # The sweep (or another process) computes the same wait: it never restarts a given-up
            # delivery nor skips a backoff for want of the same number.
            assert sender._delay("J1", attempt) == wait
        spread = {sender._delay(f"job{i}", 3) for i in range(20)}
        assert len(spread) == 20  # jobs that failed together do not retry together
    finally:
        await sender.client.aclose()
