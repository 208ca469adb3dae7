"""The one error mapping: every failure is JSON with a stable code, never a bare 500."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError

from api.errors import StaleLease, install_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.get("/stale")
    async def stale() -> None:
        raise StaleLease()

    @app.get("/data")
    async def data() -> None:
        raise DataError("INSERT ...", {}, Exception('invalid byte sequence for encoding "UTF8": 0x00'))

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("boom")

    return app


def test_domain_errors_keep_their_status_and_code():
    r = TestClient(_app()).get("/stale")
    assert r.status_code == 409 and r.json()["code"] == "stale_lease" and r.json()["message"]


def test_values_the_database_refuses_are_a_client_error():
    r = TestClient(_app()).get("/data")
    assert r.status_code == 422 and r.json()["code"] == "invalid_data"
    assert "0x00" not in r.text  # the driver's text stays in the log


def test_a_bug_is_a_500_with_the_same_shape_and_no_details():
    r = TestClient(_app(), raise_server_exceptions=False).get("/bug")
    assert r.status_code == 500 and r.json() == {"code": "internal_error", "message": "internal server error"}
