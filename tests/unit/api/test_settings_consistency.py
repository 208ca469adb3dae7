"""Settings that contradict each other are refused at start, with a message that names them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.settings import Settings


@pytest.mark.parametrize("name", ["MORAG_PRESENCE_TTL_S", "MORAG_WORKER_TTL_S"])  # old name: one release
def test_presence_ttl_shorter_than_the_heartbeat_interval_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("MORAG_LEASE_S", "90")
    monkeypatch.setenv(name, "20")  # heartbeats every 30 s
    with pytest.raises(ValidationError) as info:
        Settings()
    text = str(info.value)
    assert "MORAG_PRESENCE_TTL_S (20 s)" in text and "MORAG_LEASE_S / 3 = 30 s" in text


def test_consistent_settings_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(lease_s=90, presence_ttl_s=31).presence_ttl_s == 31
    assert Settings().presence_ttl_s > Settings().lease_s / 3
    monkeypatch.setenv("MORAG_WORKER_TTL_S", "45")
    assert Settings(lease_s=90).presence_ttl_s == 45
