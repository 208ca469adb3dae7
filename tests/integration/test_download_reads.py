"""Signed downloads read the file in MORAG_DOWNLOAD_CHUNK_BYTES pieces, with Range answers intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import keystore
from api.app import create_app
from api.keystore import Scope
from api.settings import Settings
from tests.integration.test_engine_http import CLAIM, bearer, upload

CHUNK = 128 * 1024
DATA = os.urandom(300 * 1024 + 7)  # three reads of 128 KiB (five of Starlette's default 64 KiB)


class BodyCounter:
    """ASGI wrapper counting the body messages of /files/ answers (one per read)."""

    def __init__(self, app: Any) -> None:
        self.app, self.bodies = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting(msg: Any) -> None:
            if msg["type"] == "http.response.body" and msg.get("body"):
                self.bodies += 1
            await send(msg)

        is_file = scope["type"] == "http" and scope["path"].startswith("/files/")
        await self.app(scope, receive, counting if is_file else send)


@pytest.fixture
async def served(database_url: str, tmp_path: Path):
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, secret_key="s3cret", download_chunk_bytes=CHUNK
    )
    app = create_app(settings)
    counter = BodyCounter(app)
    async with app.router.lifespan_context(app):
        engine = app.state.morag.engine
        await keystore.create_user(engine, "alice")
        ck = (await keystore.create_key(engine, "alice", Scope.client))[1]
        wk = (await keystore.create_key(engine, "alice", Scope.worker))[1]
        transport = httpx.ASGITransport(app=counter)
        async with httpx.AsyncClient(transport=transport, base_url="http://morag.test", timeout=60) as client:
            await upload(client, ck, DATA)
            r = await client.post("/worker/claim", headers=bearer(wk), json=CLAIM)
            assert r.status_code == 200, r.text
            yield client, r.json()["jobs"][0]["download_url"], bearer(wk), counter


async def test_whole_file_in_reads_of_the_configured_size(served):
    client, url, wk, counter = served
    r = await client.get(url, headers=wk)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert counter.bodies == 3


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        (f"bytes={CHUNK - 5}-{2 * CHUNK + 4}", CHUNK - 5, 2 * CHUNK + 4),  # across two read boundaries
        ("bytes=0-0", 0, 0),
        ("bytes=-10", len(DATA) - 10, len(DATA) - 1),  # suffix
        (f"bytes={len(DATA) - 3}-", len(DATA) - 3, len(DATA) - 1),  # open end
    ],
)
async def test_range_requests_get_206_and_exactly_those_bytes(served, header, start, end):
    client, url, wk, _ = served
    r = await client.get(url, headers={**wk, "Range": header})
    assert r.status_code == 206, r.text
    assert r.content == DATA[start : end + 1]
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"


async def test_unsatisfiable_range_is_416(served):
    client, url, wk, _ = served
    r = await client.get(url, headers={**wk, "Range": f"bytes={len(DATA) + 10}-"})
    assert r.status_code == 416
