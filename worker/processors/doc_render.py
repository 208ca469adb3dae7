"""Turn docling documents into markdown + section/page references a server can cite.

``pages`` in the metadata lists, for paginated formats, the character range of each page in the
returned markdown (``markdown[start:end]``), so a chunk's offset maps to a page. ``sections`` lists
each heading with the first and last page its content covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any

from docling_core.types.doc.document import DoclingDocument
from docling_core.types.doc.items.text import SectionHeaderItem, TextItem, TitleItem


@dataclass
class Rendered:
    """Markdown under construction, with the page ranges and sections found so far."""

    parts: list[str] = field(default_factory=list)
    pages: list[dict[str, int]] = field(default_factory=list)
    sections: list[dict[str, Any]] = field(default_factory=list)
    length: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def add_page(self, page_no: int, marker: str, body: str) -> None:
        """Append one page: a marker line, then its body, remembering where the body lies."""
        self.add(marker + "\n\n")
        start = self.length
        self.add(body.rstrip() + "\n\n")
        self.pages.append({"page": page_no, "start": start, "end": self.length})

    def section(self, heading: str, level: int, page: int | None) -> None:
        self.sections.append({"heading": heading, "level": level, "page_start": page, "page_end": page})

    def touch_page(self, page: int) -> None:
        """Content on ``page`` belongs to the current section: extend its page range."""
        if not self.sections:
            return
        cur = self.sections[-1]
        if cur["page_start"] is None:
            cur["page_start"] = page
        cur["page_end"] = max(cur["page_end"] or page, page)

    @property
    def markdown(self) -> str:
        return "".join(self.parts).strip() + "\n"


def _heading_of(item: object) -> tuple[str, int] | None:
    if isinstance(item, TitleItem):
        return item.text, 1
    if isinstance(item, SectionHeaderItem):
        return item.text, item.level + 1  # docling's markdown writes level-1 headers as '##'
    return None


def collect_sections(docs: list[DoclingDocument], out: Rendered) -> None:
    """Fill ``out.sections`` from the headings of ``docs`` with the pages of their content."""
    for doc in docs:
        for item, _level in doc.iterate_items():
            pages = [p.page_no for p in getattr(item, "prov", [])]
            heading = _heading_of(item)
            if heading is not None:
                out.section(heading[0], heading[1], min(pages) if pages else None)
            for page in pages:
                out.touch_page(page)


def sheet_titles(doc: DoclingDocument) -> dict[int, str]:
    """Page number -> sheet name, for workbooks (docling groups each sheet's items)."""
    titles: dict[int, str] = {}
    for group in doc.groups:
        if str(getattr(group.label, "value", group.label)) != "sheet" or not group.name:
            continue
        pages = [p.page_no for item, _ in doc.iterate_items(root=group) for p in getattr(item, "prov", [])]
        if pages:
            titles.setdefault(min(pages), group.name)
    return titles


def separate_tables(md: str) -> str:
    """A blank line before every table that follows other text directly (docling writes a table
    right under a list item, and renderers then read the table as part of the list)."""
    lines = md.split("\n")
    out: list[str] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.lstrip().startswith("|")
        prev = lines[i - 1] if i else ""
        if is_row and prev.strip() and not prev.lstrip().startswith(("|", "```")):
            out.append("")
        out.append(line)
    return "\n".join(out)


def render_docling(
    docs: list[DoclingDocument], paginated: bool, marker: str = "<!-- page {n} -->"
) -> Rendered:
    """Markdown of ``docs`` (batches of one document); paginated ones get a marker per page.

    A workbook's sheets become ``##`` headings (and sections), so a reader and the chunker see
    which sheet a table came from.
    """
    out = Rendered()
    for doc in docs:
        if not paginated:
            out.add(separate_tables(doc.export_to_markdown()) + "\n\n")
            continue
        titles = sheet_titles(doc)
        for page_no in sorted(doc.pages):
            body = separate_tables(doc.export_to_markdown(page_no=page_no))
            if page_no in titles:
                body = f"## {titles[page_no]}\n\n{body}"
                out.section(titles[page_no], 2, page_no)
            out.add_page(page_no, marker.format(n=page_no), body)
    collect_sections(docs, out)
    return out


@dataclass
class _Line:
    text: str
    top: float
    bottom: float

    @property
    def height(self) -> float:
        return abs(self.top - self.bottom)


def native_lines(doc: DoclingDocument) -> dict[int, list[_Line]]:
    """Text lines per page of a NativePdfPipeline document, top to bottom as the parser gave them."""
    pages: dict[int, list[_Line]] = {n: [] for n in doc.pages}
    for item, _level in doc.iterate_items():
        if not isinstance(item, TextItem) or not item.text.strip() or not item.prov:
            continue
        prov = item.prov[0]
        bbox = prov.bbox.to_bottom_left_origin(doc.pages[prov.page_no].size.height)
        pages.setdefault(prov.page_no, []).append(_Line(item.text.strip(), bbox.t, bbox.b))
    return pages


def body_height(all_lines: list[_Line]) -> float:
    """The most common line height: the body font, against which headings stand out."""
    heights = [round(line.height, 1) for line in all_lines if line.height > 0]
    return median(heights) if heights else 0.0


def native_blocks(lines: list[_Line], body: float) -> list[tuple[str, bool]]:
    """Join lines into paragraphs; lines in a clearly bigger font become headings: (text, is_heading)."""
    blocks: list[tuple[str, bool]] = []
    para: list[str] = []
    prev: _Line | None = None

    def flush() -> None:
        if para:
            blocks.append((" ".join(para), False))
            para.clear()

    for line in lines:
        if body and line.height >= 1.3 * body and len(line.text) <= 150:
            flush()
            blocks.append((line.text, True))
            prev = None
            continue
        # a vertical gap wider than most of a line means a new paragraph
        if prev is not None and (prev.bottom - line.top) > 0.8 * max(line.height, prev.height):
            flush()
        para.append(line.text)
        prev = line
    flush()
    return blocks
