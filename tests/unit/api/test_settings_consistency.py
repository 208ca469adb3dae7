"""Settings that contradict each other are refused at start, with a message that names them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.settings import Settings


def test_worker_ttl_shorter_than_the_heartbeat_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORAG_LEASE_S", "90")
    monkeypatch.setenv("MORAG_WORKER_TTL_S", "20")  # heartbeats every 30 s
    with pytest.raises(ValidationError) as info:
        Settings()
    text = str(info.value)
    assert "MORAG_WORKER_TTL_S (20 s)" in text and "MORAG_LEASE_S / 3 = 30 s" in text


def test_consistent_settings_pass() -> None:
    assert Settings(lease_s=90, worker_ttl_s=31).worker_ttl_s == 31
    assert Settings().worker_ttl_s > Settings().lease_s / 3
