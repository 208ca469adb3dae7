"""The committed openapi.json and docs/configuration.md match the code."""

from __future__ import annotations

import json
from pathlib import Path

from api.openapi import document
from api.settings import Settings
from api.settings_doc import render

ROOT = Path(__file__).resolve().parents[3]


def test_openapi_json_is_current() -> None:
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert committed == json.loads(document()), "run: python -m api.openapi > openapi.json"


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`MORAG_{name.upper()}`" not in text]
    assert missing == [], "run: python -m api.settings_doc > docs/configuration.md"
    assert text == render()
    assert all(field.description for field in Settings.model_fields.values())
