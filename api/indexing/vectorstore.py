"""The Qdrant collection of chunks: per-user points, deterministic ids, model-checked collection.

Local mode (``QdrantClient(path=...)``, one process per path) is the embedded default; a Qdrant
server (url + api key) is for production. qdrant-client is synchronous, so every call runs in a
thread; local mode is not thread-safe, so its calls also take a lock. Payload layout of a point:

    {"user_id", "document_id", "chunk_index", "text", "source", "location": {...}, "metadata": {...}}

User metadata lives under ``metadata`` so that no user field can shadow ``user_id``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from api.indexing.chunker import Chunk
from api.indexing.errors import DimensionMismatch, IndexingError, InvalidFilter, VectorStoreUnavailable

T = TypeVar("T")
POINT_NAMESPACE = uuid.UUID("8f6f3c1e-5d0a-5c43-9a57-6d6f7261672d")  # fixed forever: ids depend on it
_TOP_LEVEL_FILTERS = frozenset({"document_id", "source"})
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_DISTANCES = {d.value.lower(): d for d in qm.Distance}  # cosine, dot, euclid, manhattan
_UPSERT_BATCH = 256


def point_id(user_id: str, document_id: str, chunk_index: int) -> str:
    """The deterministic id of a chunk's point: re-ingesting overwrites instead of duplicating."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{user_id}:{document_id}:{chunk_index}"))


@dataclass(frozen=True)
class SearchHit:
    text: str
    score: float
    document_id: str
    chunk_index: int
    source: str | None
    location: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def _match(key: str, value: Any) -> qm.Condition:
    if isinstance(value, list | tuple):
        if not value:
            raise InvalidFilter(f"filter {key!r}: an empty list matches nothing")
        if all(isinstance(v, str) for v in value) or all(type(v) is int for v in value):
            return qm.FieldCondition(key=key, match=qm.MatchAny(any=list(value)))
        return qm.Filter(should=[_match(key, v) for v in value])
    if isinstance(value, bool | int | str):
        return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))
    if isinstance(value, float):
        return qm.FieldCondition(key=key, range=qm.Range(gte=value, lte=value))
    raise InvalidFilter(f"filter {key!r}: {type(value).__name__} values are not supported")


def build_filter(user_id: str, filters: Mapping[str, Any] | None = None) -> qm.Filter:
    """The caller's user id AND every user filter (exact match; a list means any of)."""
    must: list[qm.Condition] = [qm.FieldCondition(key="user_id", match=qm.MatchValue(value=user_id))]
    for key, value in (filters or {}).items():
        if not _FILTER_KEY.match(key):
            raise InvalidFilter(f"filter key {key!r} is not a field name")
        must.append(_match(key if key in _TOP_LEVEL_FILTERS else f"metadata.{key}", value))
    return qm.Filter(must=must)


def _doc_filter(user_id: str, document_id: str, from_index: int | None = None) -> qm.Filter:
    must: list[qm.Condition] = [
        qm.FieldCondition(key="user_id", match=qm.MatchValue(value=user_id)),
        qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id)),
    ]
    if from_index is not None:
        must.append(qm.FieldCondition(key="chunk_index", range=qm.Range(gte=from_index)))
    return qm.Filter(must=must)


class VectorStore:
    """One Qdrant collection; every read and delete is scoped to a user id."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        collection: str = "morag",
        distance: str = "cosine",
        timeout_s: float = 10.0,
    ) -> None:
        self.collection = collection
        self._url, self._api_key, self._path, self._timeout = url, api_key, path, timeout_s
        self._distance = _DISTANCES[distance]
        self._client: QdrantClient | None = None
        self._local = url is None
        self._lock = asyncio.Lock()
        self._ready: tuple[str, int] | None = None

    def _open(self) -> QdrantClient:
        if self._client is None:
            if self._url:
                # No version probe at construction: ensure_collection's first call reports reachability.
                self._client = QdrantClient(
                    url=self._url,
                    api_key=self._api_key,
                    timeout=int(self._timeout),
                    check_compatibility=False,
                )
            else:
                # Local mode keeps a sqlite handle; calls come from varying threads but never at once.
                self._client = QdrantClient(
                    path=self._path or ":memory:", force_disable_check_same_thread=True
                )
        return self._client

    async def _run(self, fn: Callable[[QdrantClient], T]) -> T:
        """Run fn(client) in a thread, translating Qdrant/transport failures into our errors."""
        where = self._url or self._path or ":memory:"
        try:
            if self._local:
                async with self._lock:
                    return await asyncio.to_thread(lambda: fn(self._open()))
            return await asyncio.to_thread(lambda: fn(self._open()))
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as exc:
            raise VectorStoreUnavailable(f"Qdrant at {where} is unreachable: {exc}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code in (401, 403) or (exc.status_code or 0) >= 500 or exc.status_code == 429:
                raise VectorStoreUnavailable(f"Qdrant at {where} answered HTTP {exc.status_code}") from exc
            raise IndexingError(
                f"Qdrant refused the request: HTTP {exc.status_code} {exc.content!r}"
            ) from exc
        except RuntimeError as exc:
            if "already accessed" in str(exc):  # another process holds the local-mode directory
                raise VectorStoreUnavailable(
                    f"Qdrant data directory {where} is open in another process; use one server "
                    "process or a Qdrant server (MORAG_QDRANT_URL)"
                ) from exc
            raise

    async def ensure_collection(self, model: str, dimension: int) -> None:
        """Create the collection for this model, or refuse one made by another model/dimension."""
        if self._ready == (model, dimension):
            return
        await self._run(lambda c: self._ensure_sync(c, model, dimension))
        self._ready = (model, dimension)

    def _ensure_sync(self, client: QdrantClient, model: str, dimension: int) -> None:
        marker = {"embedding_model": model, "embedding_dimension": dimension}
        if not client.collection_exists(self.collection):
            try:
                client.create_collection(
                    self.collection,
                    vectors_config=qm.VectorParams(size=dimension, distance=self._distance),
                    metadata=marker,
                )
            except UnexpectedResponse as exc:
                if exc.status_code != 409:  # 409: another server process created it just now
                    raise
            else:
                if not self._local:  # payload indexes do nothing in local mode (and it warns)
                    for key, tenant in (("user_id", True), ("document_id", False)):
                        schema = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=tenant)
                        client.create_payload_index(self.collection, key, field_schema=schema)
                return
        config = client.get_collection(self.collection).config
        vectors = config.params.vectors
        size = vectors.size if isinstance(vectors, qm.VectorParams) else None
        meta = config.metadata or {}
        made_by = meta.get("embedding_model")
        if size != dimension or (made_by is not None and made_by != model):
            raise DimensionMismatch(
                f"Collection {self.collection!r} holds vectors of {made_by or 'an unknown model'} "
                f"({size if size is not None else 'named vectors'}-d), but the configured embedder is "
                f"{model} ({dimension}-d). Use another collection name (MORAG_COLLECTION) or re-index "
                "into a fresh collection; mixing models would make search meaningless."
            )
        if made_by is None:  # created by hand or by an older version: adopt it, record the model
            client.update_collection(self.collection, metadata=marker)

    async def upsert_document(
        self,
        user_id: str,
        document_id: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        *,
        source: str | None = None,
        user_metadata: Mapping[str, Any] | None = None,
        replace_existing: bool = False,
    ) -> int:
        """Store a document's chunks; returns how many old points were removed.

        replace_existing deletes the document's points first. Without it the deterministic ids
        overwrite chunks 0..n-1 and the old trailing chunks (index >= n) are deleted afterwards,
        so a document never mixes two versions and never duplicates.
        """
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        points = [
            qm.PointStruct(
                id=point_id(user_id, document_id, c.index),
                vector=list(v),
                payload={
                    "user_id": user_id,
                    "document_id": document_id,
                    "chunk_index": c.index,
                    "text": c.text,
                    "source": source,
                    "location": c.location.as_payload(),
                    "metadata": dict(user_metadata or {}),
                },
            )
            for c, v in zip(chunks, vectors, strict=True)
        ]

        def write(client: QdrantClient) -> int:
            removed = 0
            if replace_existing:
                removed = self._delete_sync(client, _doc_filter(user_id, document_id))
            for b in range(0, len(points), _UPSERT_BATCH):
                client.upsert(self.collection, points=points[b : b + _UPSERT_BATCH], wait=True)
            if not replace_existing:
                removed = self._delete_sync(client, _doc_filter(user_id, document_id, from_index=len(points)))
            return removed

        return await self._run(write)

    def _delete_sync(self, client: QdrantClient, flt: qm.Filter) -> int:
        n = client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            client.delete(self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True)
        return n

    async def delete_document(self, user_id: str, document_id: str) -> int:
        """Delete a document's points; returns how many there were."""
        return await self._run(lambda c: self._delete_sync(c, _doc_filter(user_id, document_id)))

    async def count(self, user_id: str | None = None, document_id: str | None = None) -> int:
        """Points in the collection, optionally of one user / one user's document."""
        must = [
            qm.FieldCondition(key=k, match=qm.MatchValue(value=v))
            for k, v in (("user_id", user_id), ("document_id", document_id))
            if v is not None
        ]
        flt = qm.Filter(must=must) if must else None
        return await self._run(lambda c: c.count(self.collection, count_filter=flt, exact=True).count)

    @property
    def is_local(self) -> bool:
        """Local mode (a directory, one process) rather than a Qdrant server."""
        return self._local

    async def approximate_count(self) -> int:
        """All points of the collection, estimated (cheap: for readiness and metrics)."""
        return await self._run(lambda c: c.count(self.collection, exact=False).count)

    async def search(
        self,
        user_id: str,
        vector: Sequence[float],
        *,
        limit: int = 10,
        filters: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchHit]:
        """Nearest chunks of this user's points only."""
        flt = build_filter(user_id, filters)
        res = await self._run(
            lambda c: c.query_points(
                self.collection,
                query=list(vector),
                query_filter=flt,
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
            )
        )
        hits = []
        for p in res.points:
            pl = p.payload or {}
            hits.append(
                SearchHit(
                    text=pl.get("text", ""),
                    score=p.score,
                    document_id=pl.get("document_id", ""),
                    chunk_index=pl.get("chunk_index", 0),
                    source=pl.get("source"),
                    location=pl.get("location") or {},
                    metadata=pl.get("metadata") or {},
                )
            )
        return hits

    async def close(self) -> None:
        """Close the client (local mode releases the data directory)."""
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
