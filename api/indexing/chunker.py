"""Split a worker's markdown + metadata into chunks that keep their location for citation.

Documents are cut by headings (the chunk keeps its heading path) and pages (page markers in the
markdown such as ``## Page 3`` / ``<!-- page 3 -->`` / ``<!-- page break -->``, or the
``sections`` list of the document processor); transcripts (metadata ``segments``) are packed by
time segments and keep their start/end seconds. Every cut falls between words: a chunk is a slice
of the input that starts at a word's first character and ends at a word's last one.
"""

from __future__ import annotations

import bisect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.indexing.config import check_chunk_options

_WORD = re.compile(r"\S+")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
_PAGE_HEADING = re.compile(r"^#{1,6}[ \t]+page[ \t]+(\d+)[ \t#]*$", re.IGNORECASE)
# docling output as the document processor writes it: pages, and pptx slides / xlsx sheets as pages.
_PAGE_COMMENT = re.compile(r"^<!--\s*(?:page|slide|sheet)[ \t:=]*(\d+)\s*-->$", re.IGNORECASE)
_PAGE_BREAK = re.compile(r"^<!--\s*page[ _-]?break\s*-->$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = frozenset(".!?:;")


@dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk came from: page range, heading path, or time range in seconds."""

    page: int | None = None
    page_end: int | None = None
    heading_path: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None

    def as_payload(self) -> dict[str, Any]:
        """The JSON shape stored with each point and returned by search."""
        return {
            "page": self.page,
            "page_end": self.page_end,
            "heading_path": list(self.heading_path),
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    location: ChunkLocation


def split_text(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans (start, end) of `text`, each at most `size` chars (or one longer word), cut between words.

    A cut prefers a paragraph break, then a sentence end, in the second half of the window;
    consecutive spans share up to `overlap` characters of whole words.
    """
    words = [m.span() for m in _WORD.finditer(text)]
    spans: list[tuple[int, int]] = []
    i, n = 0, len(words)
    while i < n:
        start = words[i][0]
        j = i
        while j + 1 < n and words[j + 1][1] - start <= size:
            j += 1
        if j + 1 < n:
            j = _natural_break(text, words, i, j, start + size // 2)
        spans.append((start, words[j][1]))
        if j == n - 1:
            break
        k = j + 1
        # Step back over whole words while they fit in the overlap; always move forward.
        while k - 1 > i and words[j][1] - words[k - 1][0] <= overlap:
            k -= 1
        i = k
    return spans


def _natural_break(text: str, words: Sequence[tuple[int, int]], i: int, j: int, min_end: int) -> int:
    """The last word in words[i..j] ending a paragraph (else a sentence) past min_end, else j."""
    sentence = -1
    for m in range(j, i - 1, -1):
        end = words[m][1]
        if end < min_end:
            break
        if "\n\n" in text[end : words[m + 1][0]]:
            return m
        if sentence < 0 and text[end - 1] in _SENTENCE_END:
            sentence = m
    return sentence if sentence >= 0 else j


@dataclass
class _Block:
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    page_end: int | None


def _norm(heading: str) -> str:
    return " ".join(re.sub(r"[*_`#]", "", heading).split()).casefold()


def _section_pages(sections: Any) -> dict[str, list[tuple[int | None, int | None]]]:
    """heading -> [(page_start, page_end), ...] in document order, from the processor's metadata."""
    pages: dict[str, list[tuple[int | None, int | None]]] = {}
    if not isinstance(sections, list):
        return pages
    for s in sections:
        if isinstance(s, Mapping) and isinstance(s.get("heading"), str):
            start, end = _as_int(s.get("page_start")), _as_int(s.get("page_end"))
            pages.setdefault(_norm(s["heading"]), []).append((start, end if end is not None else start))
    return pages


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _page_spans(pages: Any) -> list[tuple[int, int, int]]:
    """(start, end, page) character ranges of pages in the markdown (metadata ``pages``)."""
    spans = []
    if isinstance(pages, list):
        for p in pages:
            if isinstance(p, Mapping):
                start, end, page = _as_int(p.get("start")), _as_int(p.get("end")), _as_int(p.get("page"))
                if start is not None and end is not None and page is not None:
                    spans.append((start, end, page))
    return sorted(spans)


def _page_at(spans: list[tuple[int, int, int]], offset: int) -> int | None:
    """The page holding `offset`, else the last page starting before it."""
    i = bisect.bisect_right(spans, (offset, sys.maxsize, sys.maxsize)) - 1
    return spans[i][2] if i >= 0 else None


def _blocks(markdown: str, sections: Any, pages: Any = None) -> Iterator[_Block]:
    """Runs of markdown under one heading path on one page (or page range).

    Pages come from markers in the markdown, else from ``pages`` character offsets, else from
    the page range of the ``sections`` entry whose heading matches.
    """
    section_pages = _section_pages(sections)
    page_spans = _page_spans(pages)
    markers = any(
        _PAGE_HEADING.match(ln.strip()) or _PAGE_COMMENT.match(ln.strip()) or _PAGE_BREAK.match(ln.strip())
        for ln in markdown.splitlines()
    )
    stack: list[tuple[int, str]] = []
    page: int | None = 1 if markers else None
    page_end: int | None = page
    lines: list[str] = []
    offsets: list[int] = []  # where each line of `lines` starts in the markdown
    in_fence = False

    def flush() -> Iterator[_Block]:
        text = "\n".join(lines)
        body = [
            (o, ln)
            for o, ln in zip(offsets, lines, strict=True)
            if ln.strip() and not _HEADING.match(ln.strip())
        ]
        lines.clear()
        offsets.clear()
        if not body:  # a heading alone lives on in its children's heading path
            return
        first, last = page, page_end
        if page_spans and not markers:
            first = _page_at(page_spans, body[0][0])
            last = _page_at(page_spans, body[-1][0] + len(body[-1][1]) - 1)
        yield _Block(text, tuple(t for _, t in stack), first, last)

    pos = 0
    for raw in markdown.splitlines(keepends=True):
        line, line_start = raw.rstrip("\r\n"), pos
        pos += len(raw)
        stripped = line.strip()
        if (
            page_spans
            and not markers
            and lines
            and _page_at(page_spans, line_start) != _page_at(page_spans, offsets[-1])
        ):
            yield from flush()  # a new page (by the processor's offsets) starts a new block
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _PAGE_HEADING.match(stripped) or _PAGE_COMMENT.match(stripped)):
            yield from flush()
            page = page_end = int(m.group(1))
            continue
        elif not in_fence and _PAGE_BREAK.match(stripped):
            yield from flush()
            page = page_end = (page or 1) + 1
            continue
        elif not in_fence and (h := _HEADING.match(stripped)) and h.group(2):
            yield from flush()
            level, title = len(h.group(1)), h.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            queue = section_pages.get(_norm(title))
            if queue and not markers:
                page, page_end = queue.pop(0)
        lines.append(line)
        offsets.append(line_start)
    yield from flush()


def chunk_markdown(markdown: str, sections: Any, size: int, overlap: int, pages: Any = None) -> list[Chunk]:
    """Chunks of a document, cut at headings and pages first, then by size."""
    chunks: list[Chunk] = []
    for block in _blocks(markdown, sections, pages):
        loc = ChunkLocation(page=block.page, page_end=block.page_end, heading_path=block.heading_path)
        for s, e in split_text(block.text, size, overlap):
            chunks.append(Chunk(len(chunks), block.text[s:e], loc))
    return chunks


def _pieces(segments: Sequence[Any], size: int, overlap: int) -> list[tuple[str, float | None, float | None]]:
    """Valid segments as (text, start, end); a segment longer than `size` is split by words."""
    pieces: list[tuple[str, float | None, float | None]] = []
    for seg in segments:
        if not isinstance(seg, Mapping) or not isinstance(seg.get("text"), str):
            continue
        text, start, end = seg["text"], _as_float(seg.get("start")), _as_float(seg.get("end"))
        spans = split_text(text, size, overlap)
        for s, e in spans:
            if len(spans) > 1 and start is not None and end is not None:
                # Times of a piece are interpolated by character offset: approximate but in range.
                span = (end - start) / max(len(text), 1)
                pieces.append((text[s:e], round(start + span * s, 2), round(start + span * e, 2)))
            else:
                pieces.append((text[s:e], start, end))
    return pieces


def _as_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def chunk_segments(segments: Sequence[Any], size: int, overlap: int) -> list[Chunk]:
    """Chunks of a transcript: consecutive segments packed up to `size`, keeping their time range."""
    pieces = _pieces(segments, size, overlap)
    chunks: list[Chunk] = []
    i, n = 0, len(pieces)
    while i < n:
        j, length = i, len(pieces[i][0])
        while j + 1 < n and length + 1 + len(pieces[j + 1][0]) <= size:
            j += 1
            length += 1 + len(pieces[j][0])
        text = " ".join(p[0] for p in pieces[i : j + 1])
        chunks.append(Chunk(len(chunks), text, ChunkLocation(start=pieces[i][1], end=pieces[j][2])))
        if j == n - 1:
            break
        k, tail = j + 1, -1
        while k - 1 > i and tail + 1 + len(pieces[k - 1][0]) <= overlap:
            k -= 1
            tail += 1 + len(pieces[k][0])
        i = k
    return chunks


def chunk_document(
    markdown: str, metadata: Mapping[str, Any] | None, *, size: int, overlap: int
) -> list[Chunk]:
    """Chunks of one worker result: by time segments for transcripts, else by headings and pages."""
    check_chunk_options(size, overlap)
    metadata = metadata or {}
    segments = metadata.get("segments")
    if isinstance(segments, list) and any(isinstance(s, Mapping) and s.get("text") for s in segments):
        return chunk_segments(segments, size, overlap)
    return chunk_markdown(markdown, metadata.get("sections"), size, overlap, metadata.get("pages"))
