"""The committed openapi.json is exactly what the app serves."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from api.openapi import document
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_committed_openapi_equals_what_the_app_serves(tmp_path):
    committed = (ROOT / "openapi.json").read_text()
    assert committed == document(), "openapi.json is stale: run `make openapi` and commit it"
    # And the served document (over HTTP, no lifespan needed for /openapi.json) is the same object.
    app = create_app(Settings(data_dir=tmp_path, secret_key="x"))
    served = TestClient(app).get("/openapi.json").json()
    assert served == json.loads(committed)


def test_every_route_has_a_summary_line():
    spec = json.loads((ROOT / "openapi.json").read_text())
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("description") or op.get("summary"), f"{method.upper()} {path} has no docstring"


def test_both_task_lists_are_one_listing(tmp_path):
    """``GET /api/v1/status/`` and ``GET /api/v1/tasks`` share ``task_page``: one signature, one answer."""
    import inspect

    from api.routes.manage import list_tasks
    from api.routes.status import list_status, task_page

    for route in (list_status, list_tasks):
        (param,) = inspect.signature(route).parameters.values()
        assert param.default.dependency is task_page, route
    spec = create_app(Settings(data_dir=tmp_path, secret_key="x")).openapi()["paths"]
    assert spec["/api/v1/status/"]["get"]["parameters"] == spec["/api/v1/tasks"]["get"]["parameters"]
