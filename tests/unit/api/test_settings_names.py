"""Renamed settings keep working for a release; limits are the settings', not hard-coded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api.errors import Unprocessable
from api.routes.forms import wait_seconds
from api.settings import Settings


def test_the_old_worker_ttl_name_still_works_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("MORAG_WORKER_TTL_S", "42")
    with caplog.at_level(logging.WARNING, logger="morag.settings"):
        assert Settings(data_dir=tmp_path).presence_ttl_s == 42
    assert "MORAG_WORKER_TTL_S is deprecated" in caplog.text
    monkeypatch.setenv("MORAG_PRESENCE_TTL_S", "70")
    assert Settings(data_dir=tmp_path).presence_ttl_s == 70  # the new name wins


def test_process_waits_follow_the_setting_past_600_seconds(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, process_wait_max_s=1200)
    assert wait_seconds(settings, 900, None) == 900
    assert wait_seconds(settings, None, 1200) == 1200
    with pytest.raises(Unprocessable):
        wait_seconds(settings, 1201, None)
    assert wait_seconds(Settings(data_dir=tmp_path), None, None) == 60
