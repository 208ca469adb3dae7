"""Chunker: word-boundary properties over many random inputs, headings, pages and time segments."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from api.indexing.chunker import chunk_document, split_text
from api.indexing.errors import InvalidChunkOptions

_ALPHABET = "abcdefghijklmnopqrstuvwxyzé中文🙂.,;!?-'0123456789"
_SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n "]


def _random_text(rng: random.Random, n_words: int) -> str:
    words = []
    for _ in range(n_words):
        length = rng.choice([1, 2, 3, 5, 8, 12]) if rng.random() < 0.95 else rng.randint(30, 400)
        words.append("".join(rng.choice(_ALPHABET) for _ in range(length)))
    lead = rng.choice(["", " ", "\n"])
    return lead + "".join(w + rng.choice(_SEPARATORS) for w in words)


def _check_spans(text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> None:
    words = [m.span() for m in re.finditer(r"\S+", text)]
    longest = max((e - s for s, e in words), default=0)
    for s, e in spans:
        # Boundaries at whitespace: a chunk starts right after whitespace and ends right before it.
        assert s == 0 or text[s - 1].isspace(), (text, s)
        assert e == len(text) or text[e].isspace(), (text, e)
        assert not text[s].isspace() and not text[e - 1].isspace()
        assert e - s <= size + longest
        assert e - s <= size or not any(c.isspace() for c in text[s:e]), "only a lone word may exceed size"
    for (s1, e1), (s2, _) in itertools.pairwise(spans):
        assert s2 > s1, "chunks always move forward"
        assert s2 >= e1 - overlap, "overlap bounded"
    for ws, we in words:  # every word is inside some chunk, whole
        assert any(s <= ws and we <= e for s, e in spans), text[ws:we]


def test_split_text_properties_over_random_inputs() -> None:
    rng = random.Random(1234)
    for _ in range(600):
        text = _random_text(rng, rng.randint(0, 250))
        size = rng.randint(5, 400)
        overlap = rng.randint(0, size - 1)
        _check_spans(text, split_text(text, size, overlap), size, overlap)


def test_chunk_document_plain_text_covers_every_word_without_location() -> None:
    rng = random.Random(99)
    for _ in range(150):
        text = _random_text(rng, rng.randint(1, 300))
        size = rng.randint(20, 500)
        chunks = chunk_document(text, {}, size=size, overlap=size // 5)
        chunk_words = {w for c in chunks for w in c.text.split()}
        assert set(text.split()) <= chunk_words
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert all(c.location.page is None and c.location.heading_path == () for c in chunks)


def test_random_markdown_keeps_every_body_word() -> None:
    rng = random.Random(7)
    for _ in range(100):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                parts.append("#" * rng.randint(1, 4) + " Heading " + str(rng.randint(0, 99)))
            elif rng.random() < 0.1:
                parts.append(f"## Page {rng.randint(1, 9)}")
            else:
                parts.append(_random_text(rng, rng.randint(1, 80)).replace("#", "x"))
        md = "\n\n".join(parts)
        chunks = chunk_document(md, {}, size=rng.randint(30, 300), overlap=10)
        body = {w for p in parts if not p.startswith("#") for w in p.split()}
        assert body <= {w for c in chunks for w in c.text.split()}


def test_headings_give_heading_path_and_page_markers_give_pages() -> None:
    md = (
        "# Intro\nThe intro explains the project.\n\n## Setup\nInstall with pip.\n\n"
        "## Page 2\n\nStill setup, now on page two.\n\n# Usage\nRun the server.\n"
        "```\n# a comment, not a heading\n```\n<!-- page 3 -->\nLast words."
    )
    chunks = chunk_document(md, {}, size=200, overlap=20)
    got = [(c.location.heading_path, c.location.page, c.text.splitlines()[-1]) for c in chunks]
    assert got == [
        (("Intro",), 1, "The intro explains the project."),
        (("Intro", "Setup"), 1, "Install with pip."),
        (("Intro", "Setup"), 2, "Still setup, now on page two."),
        (("Usage",), 2, "```"),
        (("Usage",), 3, "Last words."),
    ]
    assert chunks[0].text.startswith("# Intro")  # the heading stays in the text for context


def test_sections_metadata_gives_page_ranges_when_no_markers() -> None:
    md = "# Summary\nShort summary.\n\n# Results\nMany results here.\n\n# Appendix\nTables."
    sections = [
        {"heading": "Summary", "level": 1, "page_start": 1, "page_end": 1},
        {"heading": "**Results**", "level": 1, "page_start": 2, "page_end": 4},
        {"heading": "Appendix", "level": 1, "page_start": 5},
    ]
    chunks = chunk_document(md, {"sections": sections}, size=100, overlap=0)
    assert [(c.location.page, c.location.page_end) for c in chunks] == [(1, 1), (2, 4), (5, 5)]


def test_slide_markers_and_page_offsets_give_pages() -> None:
    slides = "<!-- slide 1 -->\n\n# Welcome\n\nHello.\n\n<!-- slide 2 -->\n\nAgenda items."
    assert [c.location.page for c in chunk_document(slides, {}, size=100, overlap=0)] == [1, 2]
    # No markers: the processor's character offsets of each page decide, even inside one section.
    md = "# Title\n\nAlpha text on page one.\nMore alpha.\nBeta text on page two.\n"
    b = md.index("Beta")
    pages = [{"page": 1, "start": 0, "end": b}, {"page": 2, "start": b, "end": len(md)}]
    chunks = chunk_document(md, {"pages": pages}, size=200, overlap=0)
    assert [(c.location.page, c.location.page_end, c.text.split()[-1]) for c in chunks] == [
        (1, 1, "alpha."),
        (2, 2, "two."),
    ]
    assert all(c.location.heading_path == ("Title",) for c in chunks)


def test_page_breaks_without_numbers_count_from_one() -> None:
    md = "first page text\n<!-- page break -->\nsecond page text\n<!-- page break -->\nthird"
    assert [c.location.page for c in chunk_document(md, None, size=100, overlap=0)] == [1, 2, 3]


def test_tolerates_junk_metadata() -> None:
    meta = {"sections": "nope", "segments": [{"start": 0}, "x"]}
    chunks = chunk_document("just some words", meta, size=100, overlap=0)
    assert [c.text for c in chunks] == ["just some words"]
    assert chunk_document("   \n\n  ", None, size=10, overlap=0) == []


def test_transcript_chunks_by_segments_with_time_ranges() -> None:
    rng = random.Random(5)
    segments, t = [], 0.0
    for _ in range(200):
        dur = rng.uniform(0.5, 6)
        segments.append({"start": t, "end": t + dur, "text": _random_text(rng, rng.randint(1, 25))})
        t += dur
    chunks = chunk_document("ignored markdown", {"segments": segments}, size=300, overlap=60)
    words = {w for s in segments for w in s["text"].split()}
    assert words <= {w for c in chunks for w in c.text.split()}
    longest = max(len(w) for w in words)
    for prev, c in itertools.pairwise(chunks):
        assert prev.location.start <= c.location.start
    for c in chunks:
        assert c.location.start is not None and c.location.end is not None
        assert 0 <= c.location.start <= c.location.end <= t + 1e-6
        assert len(c.text) <= 300 + longest


def test_transcript_chunk_finds_its_segment_times() -> None:
    segments = [
        {"start": 0.0, "end": 4.0, "text": "Welcome to the weekly show."},
        {"start": 4.0, "end": 9.5, "text": "Today we talk about penguins in Antarctica."},
        {"start": 9.5, "end": 15.0, "text": "Penguins cannot fly but they swim fast."},
    ]
    chunks = chunk_document("", {"segments": segments}, size=50, overlap=0)
    assert [(c.text, c.location.start, c.location.end) for c in chunks] == [
        ("Welcome to the weekly show.", 0.0, 4.0),
        ("Today we talk about penguins in Antarctica.", 4.0, 9.5),
        ("Penguins cannot fly but they swim fast.", 9.5, 15.0),
    ]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 100), (100, -1), (10, 50)])
def test_bad_options_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(InvalidChunkOptions) as err:
        chunk_document("text", {}, size=size, overlap=overlap)
    assert err.value.code == "invalid_chunk_options"
