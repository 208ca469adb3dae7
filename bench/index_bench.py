"""Benchmark: chunks embedded and stored per second with the local MiniLM model and Qdrant local mode.

    .venv/bin/python bench/index_bench.py [--chunks 1000] [--chars 1000] [--docs 10]

Generates documents of ~`chars`-character paragraphs, indexes them through `Indexer` (chunk ->
embed -> upsert into a Qdrant local-mode directory), then times the stages on their own and a
few searches. Prints one Markdown table (paste it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.indexing.chunker import chunk_document
from api.indexing.config import IndexConfig
from api.indexing.embeddings import LocalMiniLM
from api.indexing.service import Indexer
from api.indexing.vectorstore import VectorStore

VOCAB = (
    "the a of to and in solar farm river energy report bakery bread wheat cooperative member vote "
    "budget growth network server worker queue lease token chunk vector search model page section "
    "heading table figure result method data analysis sample audio video transcript speaker minute"
).split()


def make_document(rng: random.Random, paragraphs: int, chars: int) -> str:
    """Markdown with one heading and `paragraphs` paragraphs of ~`chars` characters each."""
    parts = [f"# Document {rng.randint(0, 10**6)}"]
    for _ in range(paragraphs):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars - 12:
            words.append(rng.choice(VOCAB))
        parts.append(" ".join(words).capitalize() + ".")
    return "\n\n".join(parts)


async def run(chunks: int, chars: int, docs: int, embed_sample: int, data_dir: str) -> dict[str, float]:
    rng = random.Random(42)
    per_doc = chunks // docs
    documents = [make_document(rng, per_doc, chars) for _ in range(docs)]
    cfg = IndexConfig(chunk_size=chars + 50, chunk_overlap=0, qdrant_path=data_dir, collection="bench")
    embedder = LocalMiniLM()
    t = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - t
    await embedder.embed(["warm up"])

    t = time.perf_counter()
    all_chunks = [c for d in documents for c in chunk_document(d, {}, size=cfg.chunk_size, overlap=0)]
    chunk_s = time.perf_counter() - t
    texts = [c.text for c in all_chunks]

    # Embedding alone on a sample (the end-to-end run below embeds everything anyway); storing
    # alone reuses the sample's vectors: Qdrant's cost does not depend on their values.
    sample = texts[:embed_sample]
    t = time.perf_counter()
    sample_vectors = await embedder.embed(sample)
    embed_s = time.perf_counter() - t
    vectors = [sample_vectors[i % len(sample_vectors)] for i in range(len(texts))]

    store = VectorStore(path=os.path.join(data_dir, "store-only"), collection="bench")
    await store.ensure_collection(embedder.name, embedder.dimension)
    t = time.perf_counter()
    for d in range(docs):
        part = slice(d * per_doc, (d + 1) * per_doc)
        await store.upsert_document("u", f"d{d}", all_chunks[part], vectors[part])
    store_s = time.perf_counter() - t
    await store.close()

    indexer = Indexer(cfg, embedder=embedder)
    t = time.perf_counter()
    stored = 0
    for d, doc in enumerate(documents):
        stored += (await indexer.index_document("u", f"doc{d}", doc, replace_existing=True)).chunk_count
    e2e_s = time.perf_counter() - t
    search_ms = []
    for q in ["solar farm energy growth", "bakery bread wheat", "worker lease token", "audio transcript"] * 5:
        t = time.perf_counter()
        await indexer.search("u", q, limit=10)
        search_ms.append((time.perf_counter() - t) * 1000)
    await indexer.close()
    return {
        "chunks": len(all_chunks),
        "mean_chars": statistics.mean(len(x) for x in texts),
        "load_s": load_s,
        "chunk_per_s": len(all_chunks) / chunk_s,
        "embed_per_s": len(sample) / embed_s,
        "store_per_s": len(all_chunks) / store_s,
        "e2e_chunks": stored,
        "e2e_s": e2e_s,
        "e2e_per_s": stored / e2e_s,
        "search_p50_ms": statistics.median(search_ms),
    }


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--chars", type=int, default=1000)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--embed-sample", type=int, default=200, help="chunks for the embedding-only stage")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(run(args.chunks, args.chars, args.docs, args.embed_sample, tmp))
    print(f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{r['chunks']} chunks of {r['mean_chars']:.0f} chars in {args.docs} documents\n")
    print("| stage | result |\n|---|---|")
    print(f"| model load (once) | {r['load_s']:.2f} s |")
    print(f"| chunking | {r['chunk_per_s']:,.0f} chunks/s |")
    sample = f"MiniLM int8, onnxruntime; {args.embed_sample} chunks"
    print(f"| embedding only ({sample}) | {r['embed_per_s']:.1f} chunks/s |")
    print(f"| storing (Qdrant local mode, on disk) | {r['store_per_s']:,.0f} chunks/s |")
    print(f"| end to end `Indexer.index_document` | {r['e2e_per_s']:.1f} chunks/s ({r['e2e_s']:.1f} s) |")
    print(f"| search (embed query + filtered query), p50 | {r['search_p50_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
