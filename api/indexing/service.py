"""The Indexer facade the server calls: index a worker result, delete a document, search."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.indexing.chunker import chunk_document
from api.indexing.config import IndexConfig
from api.indexing.embeddings import Embedder, build_embedder
from api.indexing.vectorstore import SearchHit, VectorStore, build_filter

__all__ = ["IndexResult", "Indexer", "SearchHit"]


@dataclass(frozen=True)
class IndexResult:
    document_id: str
    chunk_count: int
    removed_points: int  # old points of this document that were deleted
    embedding_model: str
    dimension: int
    seconds: float


class Indexer:
    """Chunk -> embed -> store, and search, always scoped to one user."""

    def __init__(
        self, config: IndexConfig, *, embedder: Embedder | None = None, store: VectorStore | None = None
    ) -> None:
        self.config = config
        self.embedder = embedder or build_embedder(config)
        self.store = store or VectorStore(
            url=config.qdrant_url,
            api_key=config.qdrant_api_key,
            path=config.qdrant_path,
            collection=config.collection,
            distance=config.distance,
            timeout_s=config.qdrant_timeout_s,
        )

    async def ensure_ready(self) -> None:
        """Create or check the collection now (raises DimensionMismatch / VectorStoreUnavailable)."""
        await self.store.ensure_collection(self.embedder.name, self.embedder.dimension)

    async def index_document(
        self,
        user_id: str,
        document_id: str,
        markdown: str,
        metadata: Mapping[str, Any] | None = None,
        user_metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        replace_existing: bool = False,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> IndexResult:
        """Chunk a worker result, embed every chunk, then store them (nothing stored if embedding fails)."""
        started = time.perf_counter()
        size = chunk_size if chunk_size is not None else self.config.chunk_size
        overlap = chunk_overlap if chunk_overlap is not None else min(self.config.chunk_overlap, size - 1)
        chunks = chunk_document(markdown, metadata, size=size, overlap=overlap)
        await self.ensure_ready()
        vectors = await self.embedder.embed([c.text for c in chunks])
        removed = await self.store.upsert_document(
            str(user_id),
            str(document_id),
            chunks,
            vectors,
            source=source,
            user_metadata=user_metadata,
            replace_existing=replace_existing,
        )
        return IndexResult(
            document_id=str(document_id),
            chunk_count=len(chunks),
            removed_points=removed,
            embedding_model=self.embedder.name,
            dimension=self.embedder.dimension,
            seconds=time.perf_counter() - started,
        )

    async def delete_document(self, user_id: str, document_id: str) -> int:
        """Remove a document's points; returns how many were removed."""
        await self.ensure_ready()
        return await self.store.delete_document(str(user_id), str(document_id))

    async def search(
        self,
        user_id: str,
        query: str,
        limit: int = 10,
        filters: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchHit]:
        """The user's chunks nearest to `query`; filters match user metadata (a list means any of)."""
        build_filter(str(user_id), filters)  # refuse bad filters before paying for an embedding
        if not query.strip():
            return []
        await self.ensure_ready()
        (vector,) = await self.embedder.embed([query])
        return await self.store.search(
            str(user_id), vector, limit=limit, filters=filters, score_threshold=score_threshold
        )

    async def count_points(self, user_id: str | None = None, document_id: str | None = None) -> int:
        """Stored points (all, of a user, or of a user's document)."""
        await self.ensure_ready()
        return await self.store.count(user_id, document_id)

    async def close(self) -> None:
        """Release the vector store and the embedder's HTTP client."""
        await self.store.close()
        aclose = getattr(self.embedder, "aclose", None)
        if aclose is not None:
            await aclose()
