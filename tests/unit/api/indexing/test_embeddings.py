"""Embedders: the real local MiniLM model, and the Gemini path against respx-mocked HTTP."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
import respx

from api.indexing.config import IndexConfig
from api.indexing.embeddings import GeminiEmbedder, LocalMiniLM, _load_minilm, build_embedder, check_vectors
from api.indexing.errors import EmbeddingError

GEMINI_URL = (
    r"https://generativelanguage\.googleapis\.com/v1(beta)?/models/gemini-embedding-001:batchEmbedContents"
)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # the real MiniLM model
async def test_local_minilm_gives_normalised_384d_vectors_that_rank_by_meaning() -> None:
    emb = LocalMiniLM()
    cat, kitten, revenue = await emb.embed(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by ten percent."]
    )
    assert emb.dimension == 384 and len(cat) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in cat)), 1.0, rel_tol=1e-4)
    assert _cos(cat, kitten) > 0.5 > _cos(cat, revenue)
    # The same text gives the same vector whatever else is in the batch (padding must not leak).
    (again,) = await emb.embed(["A cat sits on the mat."])
    assert _cos(cat, again) > 0.9999
    assert await emb.embed([]) == []


@pytest.mark.slow  # the real MiniLM model
async def test_local_minilm_loads_once_and_does_not_block_the_event_loop() -> None:
    await LocalMiniLM().embed(["warm up"])
    misses = _load_minilm.cache_info().misses
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await LocalMiniLM(batch_size=4).embed(["some longer text to embed " * 20] * 32)
    task.cancel()
    assert ticks > 3, "the event loop kept running while onnxruntime worked"
    assert _load_minilm.cache_info().misses == misses


@pytest.mark.parametrize(
    ("vectors", "problem"),
    [
        ([[0.0, 0.0, 0.0]], "zero"),
        ([[1.0, math.nan, 0.0]], "finite"),
        ([[1.0, 2.0]], "dimensions"),
        ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], "2 vectors"),
    ],
)
def test_check_vectors_refuses_bad_vectors(vectors: list[list[float]], problem: str) -> None:
    with pytest.raises(EmbeddingError, match=problem) as err:
        check_vectors(vectors, 1, 3, "m")
    assert err.value.retryable is False


def _ok(request: httpx.Request) -> httpx.Response:
    reqs = json.loads(request.content)["requests"]
    assert all(r["outputDimensionality"] == 8 for r in reqs)
    # A vector that encodes the text's length, so order can be checked.
    vals = [[float(len(r["content"]["parts"][0]["text"]))] + [1.0] * 7 for r in reqs]
    return httpx.Response(200, json={"embeddings": [{"values": v} for v in vals]})


def _err(code: int, status: str) -> httpx.Response:
    return httpx.Response(code, json={"error": {"code": code, "message": "nope", "status": status}})


def _gemini(**kw: object) -> GeminiEmbedder:
    opts: dict[str, object] = {"dimensions": 8, "batch_size": 10, "max_retries": 3, "backoff_factor_s": 0.001}
    opts.update(kw)
    return GeminiEmbedder("test-key", **opts)  # type: ignore[arg-type]


async def test_gemini_batches_texts_and_keeps_order() -> None:
    texts = ["x" * (i + 1) for i in range(25)]
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.post(url__regex=GEMINI_URL).mock(side_effect=_ok)
        emb = _gemini()
        vectors = await emb.embed(texts)
        await emb.aclose()
    assert route.call_count == 3  # ceil(25 / 10)
    assert [len(json.loads(c.request.content)["requests"]) for c in route.calls] == [10, 10, 5]
    assert route.calls[0].request.headers["x-goog-api-key"] == "test-key"
    norm = [math.sqrt((i + 1) ** 2 + 7) for i in range(25)]
    assert [round(v[0] * n) for v, n in zip(vectors, norm, strict=True)] == list(range(1, 26))


@pytest.mark.parametrize("first", [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), None])
async def test_gemini_retries_429_5xx_and_transport_errors_then_succeeds(
    first: tuple[int, str] | None,
) -> None:
    fail = httpx.ConnectError("refused") if first is None else _err(*first)
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.post(url__regex=GEMINI_URL).mock(side_effect=[fail, fail, _ok])
        vectors = await _gemini().embed(["hello"])
    assert route.call_count == 3
    assert len(vectors) == 1 and len(vectors[0]) == 8


async def test_gemini_gives_up_after_max_retries_with_a_retryable_error() -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.post(url__regex=GEMINI_URL).mock(return_value=_err(429, "RESOURCE_EXHAUSTED"))
        with pytest.raises(EmbeddingError, match="after retries") as err:
            await _gemini(max_retries=2).embed(["hello"])
    assert route.call_count == 3
    assert err.value.retryable is True and err.value.code == "embedding_failed"


@pytest.mark.parametrize("code", [400, 403])
async def test_gemini_hard_failure_is_not_retried(code: int) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.post(url__regex=GEMINI_URL).mock(return_value=_err(code, "PERMISSION_DENIED"))
        with pytest.raises(EmbeddingError, match=f"HTTP {code}") as err:
            await _gemini().embed(["hello"])
    assert route.call_count == 1
    assert err.value.retryable is False


@pytest.mark.parametrize("values", [[0.0] * 8, [1.0] * 4])
async def test_gemini_zero_or_short_vectors_are_refused(values: list[float]) -> None:
    with respx.mock(assert_all_mocked=True) as mock:
        mock.post(url__regex=GEMINI_URL).mock(
            return_value=httpx.Response(200, json={"embeddings": [{"values": values}]})
        )
        with pytest.raises(EmbeddingError):
            await _gemini().embed(["hello"])


def test_build_embedder_picks_gemini_only_with_a_key() -> None:
    assert isinstance(build_embedder(IndexConfig()), LocalMiniLM)
    gem = build_embedder(IndexConfig(gemini_api_key="k", gemini_dimensions=256))
    assert isinstance(gem, GeminiEmbedder) and gem.dimension == 256 and gem.name == "gemini-embedding-001"
