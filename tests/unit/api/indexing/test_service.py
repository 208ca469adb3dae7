"""Indexer end to end in-process: real local MiniLM model + Qdrant local mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import respx

from api.indexing.config import IndexConfig
from api.indexing.embeddings import LocalMiniLM
from api.indexing.errors import DimensionMismatch, EmbeddingError
from api.indexing.service import Indexer

PAGES = {
    1: "The annual report opens with a letter from the chair about the cooperative's history.",
    2: "Our solar farm near the river produced 42 gigawatt hours of electricity this year.",
    3: "The bakery division launched a sourdough bread made with heritage wheat.",
}
MARKDOWN = "# Annual report\n\n" + "\n\n".join(f"## Page {n}\n\n{text}" for n, text in PAGES.items())
SEGMENTS = [
    {"start": 0.0, "end": 5.2, "text": "Hello and welcome to the gardening podcast."},
    {"start": 5.2, "end": 11.8, "text": "Tomatoes need plenty of sunlight and regular watering."},
    {"start": 11.8, "end": 18.0, "text": "Next week we discuss pruning apple trees in winter."},
]


@pytest.fixture
async def indexer():
    ix = Indexer(IndexConfig(chunk_size=200, chunk_overlap=20), embedder=LocalMiniLM())
    yield ix
    await ix.close()


async def test_search_finds_the_page_and_time_range_and_only_for_the_owner(indexer: Indexer) -> None:
    doc = await indexer.index_document(
        "alice", "report", MARKDOWN, {}, user_metadata={"kind": "report"}, source="report.pdf"
    )
    assert doc.chunk_count == 3 and doc.dimension == 384 and doc.embedding_model == LocalMiniLM.name
    pod = await indexer.index_document(
        "alice", "podcast", "# transcript", {"segments": SEGMENTS}, source="ep1.mp3", chunk_size=60
    )
    assert pod.chunk_count == 3

    (hit, *_) = await indexer.search("alice", "How much electricity did the solar farm produce?", limit=3)
    assert hit.document_id == "report" and hit.location["page"] == 2 and "42 gigawatt" in hit.text
    assert hit.location["heading_path"] == ["Annual report"] and hit.source == "report.pdf"
    assert hit.metadata == {"kind": "report"}

    (hit, *_) = await indexer.search("alice", "how often should I water tomato plants", limit=3)
    assert hit.document_id == "podcast" and (hit.location["start"], hit.location["end"]) == (5.2, 11.8)

    assert await indexer.search("bob", "solar farm electricity") == []
    assert await indexer.search("bob", "solar farm electricity", filters={"user_id": "alice"}) == []
    only = await indexer.search("alice", "bread", filters={"kind": "report"}, limit=10)
    assert {h.document_id for h in only} == {"report"}
    assert await indexer.search("alice", "solar farm", score_threshold=0.99) == []


async def test_reingest_with_replace_existing_keeps_the_point_count_and_delete_removes(
    indexer: Indexer,
) -> None:
    await indexer.index_document("u", "d", MARKDOWN)
    await indexer.index_document("u", "other", "unrelated words here")
    before = await indexer.count_points()
    again = await indexer.index_document("u", "d", MARKDOWN, replace_existing=True)
    assert again.removed_points == 3 and await indexer.count_points() == before
    await indexer.index_document("u", "d", MARKDOWN)  # without replace: same ids, no duplicates
    assert await indexer.count_points() == before
    assert await indexer.delete_document("u", "d") == 3
    assert await indexer.count_points("u", "d") == 0 and await indexer.count_points("u") == 1
    assert await indexer.search("u", "solar farm electricity", filters={"document_id": "d"}) == []


async def test_per_request_chunk_options(indexer: Indexer) -> None:
    text = " ".join(f"word{i}" for i in range(300))
    small = await indexer.index_document("u", "d", text, chunk_size=100, chunk_overlap=0)
    big = await indexer.index_document("u", "d", text, replace_existing=True, chunk_size=5000)
    assert small.chunk_count > 20 and big.chunk_count == 1
    assert await indexer.count_points("u", "d") == 1


class _Fake8:
    name, dimension = "fake-8", 8

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0] * 8 for _ in texts]


async def test_a_collection_made_by_another_model_is_refused(tmp_path: Path) -> None:
    cfg = IndexConfig(qdrant_path=str(tmp_path / "q"))
    first = Indexer(cfg, embedder=_Fake8())
    await first.index_document("u", "d", "some text")
    await first.close()
    local = Indexer(cfg, embedder=LocalMiniLM())
    with pytest.raises(DimensionMismatch, match=r"fake-8 \(8-d\).*all-MiniLM-L6-v2-onnx-int8 \(384-d\)"):
        await local.index_document("u", "d2", "other text")
    with pytest.raises(DimensionMismatch):
        await local.search("u", "text")
    await local.close()


async def test_a_gemini_hard_failure_fails_indexing_and_stores_nothing(tmp_path: Path) -> None:
    cfg = IndexConfig(
        gemini_api_key="k", gemini_dimensions=8, embed_max_retries=1, embed_backoff_factor_s=0.001
    )
    ix = Indexer(cfg)
    ok = {"embeddings": [{"values": [0.5] * 8}]}
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.post(url__regex=r"/v1(beta)?/models/gemini-embedding-001:batchEmbedContents$")
        route.mock(return_value=httpx.Response(200, json=ok))
        assert (await ix.index_document("u", "d", "first version")).chunk_count == 1
        route.mock(
            return_value=httpx.Response(403, json={"error": {"code": 403, "message": "no", "status": "X"}})
        )
        with pytest.raises(EmbeddingError) as err:
            await ix.index_document("u", "d", "second version", replace_existing=True)
        assert not err.value.retryable
        route.mock(
            return_value=httpx.Response(429, json={"error": {"code": 429, "message": "q", "status": "Y"}})
        )
        with pytest.raises(EmbeddingError) as err:
            await ix.index_document("u", "d", "third version", replace_existing=True)
        assert err.value.retryable
    assert await ix.count_points("u", "d") == 1  # the first version is intact: nothing half-written
    await ix.close()
