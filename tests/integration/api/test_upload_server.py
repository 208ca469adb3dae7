"""Against a real uvicorn server process: a 1 GiB upload with flat memory, and an aborted upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api import keystore
from api.db import make_engine, upgrade_sync

ROOT = Path(__file__).resolve().parents[3]
BOUNDARY = "morag-test-boundary-7f3a"
MIB = 1024 * 1024


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    headers: dict[str, str]

    def rss(self) -> int:
        """Resident memory of the server process in bytes (/proc/PID/status VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def files(self) -> list[str]:
        folder = self.data_dir / "files"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def file_rows(self) -> list[tuple[int, str]]:
        with sqlite3.connect(self.data_dir / "morag.db") as db:
            return [(int(r[0]), str(r[1])) for r in db.execute("SELECT size, sha256 FROM files")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _make_key(data_dir: Path) -> str:
    url = f"sqlite+aiosqlite:///{data_dir / 'morag.db'}"
    await asyncio.to_thread(upgrade_sync, url)
    engine = make_engine(url)
    await keystore.create_user(engine, "alice")
    key = (await keystore.create_key(engine, "alice", keystore.Scope.client))[1]
    await engine.dispose()
    return key


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = await _make_key(data_dir)
    port = _free_port()
    env = {**os.environ, "MORAG_DATA_DIR": str(data_dir), "MORAG_SECRET_KEY": "s"}
    code = (
        "import uvicorn; from api.app import create_app; "
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", proc, data_dir, {"Authorization": f"Bearer {key}"})
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                try:
                    if (await c.get(srv.url + "/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the server did not start")
        yield srv
    finally:
        proc.terminate()
        proc.wait(10)
        for p in (data_dir / "files").glob("*"):
            p.unlink()  # do not leave a GiB in pytest's kept temp dirs


def _head(name: str = "big.pdf") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="document_id"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


class RssSampler(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.stop = server, server.rss(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.05)


@pytest.mark.slow
async def test_one_gib_upload_keeps_memory_flat(server: Server) -> None:
    size = 1024 * MIB
    first, rest = b"%PDF-1.4\n" + bytes(MIB - 17), bytes(MIB - 8)
    digest = hashlib.sha256()

    def payload() -> Iterator[bytes]:
        yield _head()
        for i in range(size // MIB):
            chunk = (first if i == 0 else rest) + i.to_bytes(8, "big")  # each MiB differs: order is checked
            digest.update(chunk)
            yield chunk
        yield TAIL

    headers = {
        **server.headers,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(_head()) + size + len(TAIL)),
    }
    async with httpx.AsyncClient(timeout=300) as c:
        # Warm up (imports, libmagic, first queries) so the baseline is the steady state.
        warm = await c.post(
            server.url + "/api/v1/ingest/file",
            headers=server.headers,
            files={"file": ("w.txt", b"some plain text to warm up\n")},
        )
        assert warm.status_code == 202, warm.text
        sampler = RssSampler(server)
        base = sampler.peak
        sampler.start()
        started = time.monotonic()
        resp = await c.post(
            server.url + "/api/v1/ingest/file", headers=headers, content=_sync_to_async(payload())
        )
        took = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
    assert resp.status_code == 202, resp.text
    growth = sampler.peak - base
    print(
        f"\n1 GiB upload: {took:.1f} s ({size / MIB / took:.0f} MiB/s), server RSS {base / MIB:.0f} MiB "
        f"-> peak {sampler.peak / MIB:.0f} MiB (growth {growth / MIB:.1f} MiB)"
    )
    assert growth < 100 * MIB
    rows = server.file_rows()
    assert (size, digest.hexdigest()) in rows


async def _sync_to_async(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in it:
        yield chunk


async def test_aborted_upload_leaves_no_file(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body_len = 20 * MIB
    head = _head()
    request = (
        f"POST /api/v1/ingest/file HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {server.headers['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(head) + body_len + len(TAIL)}\r\n\r\n"
    ).encode() + head
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    for _ in range(3):  # 3 of the 20 MiB, then hang up
        writer.write(b"%PDF-1.4\n" + bytes(MIB - 9))
        await writer.drain()
    for _ in range(100):  # the server is writing the part file now
        if any(n.endswith(".part") for n in server.files()):
            break
        await asyncio.sleep(0.05)
    assert any(n.endswith(".part") for n in server.files())
    writer.transport.abort()  # no FIN handshake niceties: the client is gone
    for _ in range(100):
        if not server.files():
            break
        await asyncio.sleep(0.05)
    assert server.files() == [] and server.file_rows() == []
    async with httpx.AsyncClient() as c:  # and the server carries on
        ok = await c.post(
            server.url + "/api/v1/ingest/file",
            headers=server.headers,
            files={"file": ("a.txt", b"plain text after the abort\n")},
        )
    assert ok.status_code == 202 and len(server.files()) == 1
