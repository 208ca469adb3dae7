"""VectorStore on Qdrant local mode: ids, per-user isolation, replace/trim, filters, model marker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from api.indexing.chunker import Chunk, ChunkLocation
from api.indexing.errors import DimensionMismatch, InvalidFilter, VectorStoreUnavailable
from api.indexing.vectorstore import VectorStore, build_filter, point_id

DIM = 4


def _chunks(n: int, prefix: str = "chunk") -> list[Chunk]:
    return [Chunk(i, f"{prefix} {i}", ChunkLocation(page=i + 1)) for i in range(n)]


def _vectors(n: int) -> list[list[float]]:
    return [[1.0, float(i + 1), 0.5, -0.25] for i in range(n)]


@pytest.fixture
async def store():
    s = VectorStore(collection="t")
    await s.ensure_collection("fake", DIM)
    yield s
    await s.close()


def test_point_ids_are_deterministic_and_scoped() -> None:
    assert point_id("u1", "d1", 0) == point_id("u1", "d1", 0)
    assert (
        len(
            {
                point_id("u1", "d1", 0),
                point_id("u2", "d1", 0),
                point_id("u1", "d2", 0),
                point_id("u1", "d1", 1),
            }
        )
        == 4
    )


async def test_upsert_stores_payload_and_reingest_does_not_duplicate(store: VectorStore) -> None:
    await store.upsert_document(
        "u1", "d1", _chunks(3), _vectors(3), source="a.pdf", user_metadata={"project": "x"}
    )
    assert await store.count("u1", "d1") == 3
    hits = await store.search("u1", [1.0, 1.0, 0.5, -0.25], limit=1)
    assert hits[0].text == "chunk 0" and hits[0].document_id == "d1" and hits[0].source == "a.pdf"
    assert hits[0].location["page"] == 1 and hits[0].metadata == {"project": "x"}
    # Same document again, with and without replace_existing: the point count stays 3.
    assert await store.upsert_document("u1", "d1", _chunks(3), _vectors(3), replace_existing=True) == 3
    assert await store.upsert_document("u1", "d1", _chunks(3), _vectors(3)) == 0
    assert await store.count("u1", "d1") == 3


async def test_shorter_reingest_trims_stale_chunks_either_way(store: VectorStore) -> None:
    await store.upsert_document("u1", "d1", _chunks(5), _vectors(5))
    assert await store.upsert_document("u1", "d1", _chunks(2, "new"), _vectors(2)) == 3
    assert await store.count("u1", "d1") == 2
    assert await store.upsert_document("u1", "d1", _chunks(1), _vectors(1), replace_existing=True) == 2
    assert await store.count("u1", "d1") == 1


async def test_delete_document_is_scoped_to_the_user(store: VectorStore) -> None:
    await store.upsert_document("u1", "d1", _chunks(3), _vectors(3))
    await store.upsert_document("u2", "d1", _chunks(2), _vectors(2))
    assert await store.delete_document("u2", "d1") == 2
    assert await store.count("u1") == 3 and await store.count("u2") == 0
    assert await store.delete_document("u2", "d1") == 0


async def test_search_is_always_filtered_by_the_callers_user_id(store: VectorStore) -> None:
    await store.upsert_document("alice", "a", _chunks(3), _vectors(3), user_metadata={"user_id": "bob"})
    await store.upsert_document("bob", "b", _chunks(3), _vectors(3), user_metadata={"tag": "t"})
    q = [1.0, 2.0, 0.5, -0.25]
    assert {h.document_id for h in await store.search("alice", q)} == {"a"}
    # A filter named user_id only matches user metadata; it can never widen the search to bob.
    for filters in ({"user_id": "bob"}, {"user_id": ["bob", "alice"]}, {"tag": "t"}, {"document_id": "b"}):
        assert all(h.document_id == "a" for h in await store.search("alice", q, filters=filters)), filters
    assert await store.search("carol", q) == []


async def test_metadata_filters_exact_any_of_and_threshold(store: VectorStore) -> None:
    for i, (lang, year) in enumerate([("en", 2024), ("de", 2025), ("fr", 2025)]):
        await store.upsert_document(
            "u", f"d{i}", _chunks(1), _vectors(1), user_metadata={"lang": lang, "year": year, "ok": i != 1}
        )
    q = [1.0, 1.0, 0.5, -0.25]

    async def docs(**kw) -> set[str]:
        return {h.document_id for h in await store.search("u", q, **kw)}

    assert await docs(filters={"lang": "de"}) == {"d1"}
    assert await docs(filters={"lang": ["en", "fr"]}) == {"d0", "d2"}
    assert await docs(filters={"year": 2025, "lang": "fr"}) == {"d2"}
    assert await docs(filters={"ok": False}) == {"d1"}
    assert await docs(filters={"document_id": ["d0", "d1"]}) == {"d0", "d1"}
    assert await docs(score_threshold=1.01) == set()
    assert len(await store.search("u", q, limit=2)) == 2


@pytest.mark.parametrize("filters", [{"a": {"b": 1}}, {"a": []}, {"bad key!": 1}, {"a": None}])
def test_bad_filters_are_refused(filters: dict) -> None:
    with pytest.raises(InvalidFilter) as err:
        build_filter("u", filters)
    assert err.value.code == "invalid_filter"


async def test_collection_records_its_model_and_refuses_another(tmp_path: Path) -> None:
    first = VectorStore(path=str(tmp_path / "q"))
    await first.ensure_collection("model-a", DIM)
    await first.upsert_document("u", "d", _chunks(1), _vectors(1))
    await first.close()
    for model, dim in (("model-b", 8), ("model-b", DIM), ("model-a", 8)):
        other = VectorStore(path=str(tmp_path / "q"))
        with pytest.raises(DimensionMismatch, match="model-a") as err:
            await other.ensure_collection(model, dim)
        assert err.value.code == "embedding_dimension_mismatch" and not err.value.retryable
        await other.close()
    again = VectorStore(path=str(tmp_path / "q"))
    await again.ensure_collection("model-a", DIM)
    assert await again.count() == 1  # persisted in the data directory
    await again.close()


async def test_a_data_directory_open_elsewhere_is_reported(tmp_path: Path) -> None:
    holder = VectorStore(path=str(tmp_path / "q"))
    await holder.ensure_collection("m", DIM)
    second = VectorStore(path=str(tmp_path / "q"))
    with pytest.raises(VectorStoreUnavailable, match="another process"):
        await second.ensure_collection("m", DIM)
    await holder.close()


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.Response(503, text="down")])
async def test_an_unreachable_server_is_vector_store_unavailable(failure: object) -> None:
    store = VectorStore(url="https://qdrant.test:6333", api_key="k")
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="qdrant.test").mock(side_effect=[failure])
        with pytest.raises(VectorStoreUnavailable) as err:
            await store.ensure_collection("m", DIM)
    assert err.value.retryable and "qdrant.test" in str(err.value)
