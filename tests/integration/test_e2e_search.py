"""End to end: a real server, a real worker process, real processors and the local embedding model.

A generated PDF (two pages, known words on each) and a generated speech clip go in through the
client API; the worker transcribes and converts them; the server indexes them; search finds the
right chunk with its page or time range, and another user's search finds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import media

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

SPEECH = "The lighthouse keeper counts ships every night and writes their names in a blue notebook."


def pdf_pages(path: Path, pages: list[tuple[str, str]]) -> Path:
    """A text PDF with one (heading, sentence) per page."""
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    for heading, sentence in pages:
        c.setFont("Helvetica-Bold", 20)
        c.drawString(72, 740, heading)
        c.setFont("Helvetica", 12)
        c.drawString(72, 700, sentence)
        c.showPage()
    c.save()
    return path


def search(url: str, key: str, query: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{url}/api/v1/search",
        headers={"Authorization": f"Bearer {key}"},
        json={"query": query, "limit": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_document_and_speech_are_searchable_with_their_locations(live_server, tmp_path):
    server = live_server()
    wav = media.speech_wav(tmp_path / "keeper.wav", SPEECH)
    pdf = pdf_pages(
        tmp_path / "report.pdf",
        [
            ("Harbour report", "The harbour crane lifts containers of oranges from Valencia."),
            ("Weather", "Fog rolled over the pier at dawn and the ferries waited for the wind."),
        ],
    )
    worker = server.start_worker(
        tmp_path / "worker.log",
        "--lanes",
        "gpu,cpu",
        "--content-types",
        "audio,document",
        "--whisper-model",
        str(media.tiny_en_model()),
        "--temp-dir",
        str(tmp_path / "work"),
        "--claim-wait",
        "2",
    )
    try:
        tasks = {}
        for path, ctype in ((wav, "audio"), (pdf, "document")):
            with open(path, "rb") as fh:
                r = server.api(
                    "POST", "/ingest/file", files={"file": (path.name, fh)}, data={"content_type": ctype}
                )
            assert r.status_code == 202, r.text
            tasks[ctype] = r.json()["task_id"]
        done = {ctype: server.wait_final(t) for ctype, t in tasks.items()}
    finally:
        worker.kill()
        worker.wait(10)
    for ctype, body in done.items():
        assert body["status"] == "succeeded", (ctype, body, (tmp_path / "worker.log").read_text()[-3000:])
        assert body["result"]["index"]["chunks"] >= 1

    key = server.client_key
    hits = search(server.url, key, "who writes ship names in a notebook")
    assert hits[0]["source"] == "keeper.wav" and "notebook" in hits[0]["text"].lower()
    loc = hits[0]["location"]
    assert loc["start"] is not None and loc["end"] > loc["start"] >= 0  # a time range to cite

    hits = search(server.url, key, "fog over the pier in the morning")
    assert hits[0]["source"] == "report.pdf" and "fog" in hits[0]["text"].lower()
    assert hits[0]["location"]["page"] == 2  # the page to cite
    hits = search(server.url, key, "containers of oranges")
    assert hits[0]["location"]["page"] == 1

    server.cli("users", "create", "mallory")
    other = server.create_key("mallory", "client")
    assert search(server.url, other, "who writes ship names in a notebook") == []
    assert search(server.url, other, "fog over the pier") == []
