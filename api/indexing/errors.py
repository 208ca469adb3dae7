"""Errors of the indexing library (chunking, embeddings, vector store).

    IndexingError                      base; ``code`` is stable, ``retryable`` says whether to retry
    ├── EmbeddingError                 the embedding service failed (retryable or not, per instance)
    ├── VectorStoreUnavailable         Qdrant cannot be reached (retryable)
    ├── DimensionMismatch              the collection was made by another model/dimension (not retryable)
    ├── InvalidChunkOptions            chunk_size / chunk_overlap out of range (a caller error)
    └── InvalidFilter                  a search filter with a value we cannot match (a caller error)

The server's background loop keeps a task "waiting for indexing" while ``retryable`` is true and
fails it otherwise; routes map the classes to HTTP statuses in one exception handler.
"""

from __future__ import annotations


class IndexingError(Exception):
    """Indexing failed."""

    code = "indexing_error"
    retryable = False

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        super().__init__(self.message)


class EmbeddingError(IndexingError):
    """The embedding service failed."""

    code = "embedding_failed"

    def __init__(self, message: str | None = None, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class VectorStoreUnavailable(IndexingError):
    """The vector store cannot be reached."""

    code = "vector_store_unavailable"
    retryable = True


class DimensionMismatch(IndexingError):
    """The collection was created by another embedding model or dimension."""

    code = "embedding_dimension_mismatch"


class InvalidChunkOptions(IndexingError):
    """chunk_size must be positive and chunk_overlap in [0, chunk_size)."""

    code = "invalid_chunk_options"


class InvalidFilter(IndexingError):
    """A search filter value must be a string, number, boolean or a list of them."""

    code = "invalid_filter"
