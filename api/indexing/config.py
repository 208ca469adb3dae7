"""Settings of the indexing library: one plain dataclass the server builds from its own settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from api.indexing.errors import InvalidChunkOptions


@dataclass(frozen=True)
class IndexConfig:
    """How documents are chunked, embedded and stored."""

    chunk_size: int = 1000  # characters; MiniLM reads 256 tokens (~1,100 characters)
    chunk_overlap: int = 150  # characters
    # Gemini is used when a key is set; otherwise the local MiniLM model (no network needed).
    gemini_api_key: str | None = field(default=None, repr=False)  # secrets stay out of repr
    gemini_model: str = "gemini-embedding-001"
    gemini_dimensions: int = 768
    gemini_timeout_s: float = 60.0
    embed_batch_size: int = 100  # texts per Gemini request
    embed_max_retries: int = 5  # retries after the first try on 429/5xx/transport errors
    embed_backoff_factor_s: float = 1.0  # first backoff wait; doubles each retry
    embed_backoff_max_s: float = 60.0
    local_batch_size: int = 16  # texts per onnxruntime run
    # Qdrant: a server when qdrant_url is set, else local mode in qdrant_path (":memory:" if None).
    qdrant_url: str | None = None
    qdrant_api_key: str | None = field(default=None, repr=False)
    qdrant_path: str | None = None
    qdrant_timeout_s: float = 10.0
    collection: str = "morag"
    distance: Literal["cosine", "dot", "euclid", "manhattan"] = "cosine"

    def __post_init__(self) -> None:
        check_chunk_options(self.chunk_size, self.chunk_overlap)

    @property
    def embedding_backend(self) -> Literal["gemini", "local"]:
        """Which embedder `build_embedder` makes from this config."""
        return "gemini" if self.gemini_api_key else "local"


def check_chunk_options(size: int, overlap: int) -> None:
    """Raise InvalidChunkOptions unless 0 < size and 0 <= overlap < size."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise InvalidChunkOptions(
            f"chunk_size must be > 0 and 0 <= chunk_overlap < chunk_size (got {size}, {overlap})"
        )
