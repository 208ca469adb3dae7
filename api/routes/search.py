"""Search the caller's indexed chunks, and delete indexed documents."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.auth import client_access
from api.errors import BadRequest, Conflict, MoragError, NotFound, documented
from api.indexing.errors import DimensionMismatch, IndexingError, InvalidChunkOptions, InvalidFilter
from api.indexing.stage import index_user
from api.keystore import Principal
from protocol.inputs import CleanBody

router = APIRouter(prefix="/api/v1", tags=["search"], responses=documented(400, 401, 403, 409, 422, 503))


class SearchRequest(CleanBody):
    query: str = Field(min_length=1, max_length=10_000)
    limit: int = Field(default=10, ge=1, le=100)
    filters: dict[str, Any] = Field(
        default_factory=dict, description="Exact match on your metadata fields; a list means any of."
    )
    score_threshold: float | None = None


class SearchResult(BaseModel):
    text: str
    score: float
    document_id: str
    chunk_index: int
    source: str | None
    location: dict[str, Any]
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]


class DocumentDeleted(BaseModel):
    document_id: str
    removed_points: int


class IndexUnavailable(MoragError):
    """The embedding service or the vector store is unavailable; try again shortly."""

    status_code, code = 503, "index_unavailable"


def _translate(exc: IndexingError) -> MoragError:
    if isinstance(exc, InvalidFilter | InvalidChunkOptions):
        return BadRequest(exc.message, code=exc.code)
    if isinstance(exc, DimensionMismatch):
        return Conflict(exc.message, code=exc.code)
    return IndexUnavailable(exc.message, code=exc.code)


@router.post("/search", response_model=SearchResponse)
async def search(
    body: SearchRequest, request: Request, who: Principal = Depends(client_access)
) -> SearchResponse:
    """The caller's chunks nearest to the query (never another user's), with their locations."""
    indexer = request.app.state.indexer
    try:
        hits = await indexer.search(
            index_user(who.user_id),
            body.query,
            limit=body.limit,
            filters=body.filters,
            score_threshold=body.score_threshold,
        )
    except IndexingError as exc:
        raise _translate(exc) from exc
    return SearchResponse(query=body.query, results=[SearchResult.model_validate(asdict(h)) for h in hits])


@router.delete("/documents/{document_id}", response_model=DocumentDeleted, responses=documented(404))
async def delete_document(
    document_id: str, request: Request, who: Principal = Depends(client_access)
) -> DocumentDeleted:
    """Remove every chunk of one of the caller's documents from the vector store."""
    try:
        removed = await request.app.state.indexer.delete_document(index_user(who.user_id), document_id)
    except IndexingError as exc:
        raise _translate(exc) from exc
    if not removed:
        raise NotFound("no such document (nothing of it is indexed)", code="document_not_found")
    return DocumentDeleted(document_id=document_id, removed_points=removed)
