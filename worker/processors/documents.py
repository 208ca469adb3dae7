"""The ``document`` processor: PDF, DOCX, PPTX, XLSX, HTML, Markdown and plain text to markdown.

docling converts everything but plain text. The format comes from the file's bytes first (a
downloaded input may have no useful extension), then from the uploaded name. Metadata always has
``format``, ``pipeline``, ``title``, ``page_count``, ``sections`` and ``pages`` (see doc_render).
"""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

from worker.errors import BadInput
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.doc_render import Rendered, render_docling

log = logging.getLogger(__name__)

DOCLING_FORMATS = {"docx", "pptx", "xlsx", "html", "md"}
PAGINATED = {"pptx": "<!-- slide {n} -->", "xlsx": "<!-- sheet {n} -->"}
EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "text",
    ".text": "text",
}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
PAGES_NOTE = {
    "docx": "DOCX has no fixed pages (layout depends on the viewer): sections carry no page numbers",
    "html": "HTML has no pages",
    "md": "Markdown has no pages",
    "text": "plain text has no pages",
    "pptx": "pages are slides",
    "xlsx": "pages are sheets",
}


def _zip_format(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as exc:
        raise BadInput(f"the file looks like an office document but is a corrupt zip archive: {exc}") from exc
    for prefix, fmt in (("word/", "docx"), ("ppt/", "pptx"), ("xl/", "xlsx")):
        if any(n.startswith(prefix) for n in names):
            return fmt
    return None


def detect_format(path: Path, name: str | None) -> str:
    """One of pdf, docx, pptx, xlsx, html, md, text; raises BadInput for anything else."""
    head = path.read_bytes()[:2048] if path.stat().st_size else b""
    ext = EXTENSIONS.get(Path(name or path.name).suffix.lower())
    if not head:
        raise BadInput("the document is empty (0 bytes)")
    if head.startswith(b"%PDF") or (ext == "pdf" and b"%PDF" in head[:1024]):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        fmt = _zip_format(path)
        if fmt:
            return fmt
        raise BadInput("the file is a zip archive but not a DOCX, PPTX or XLSX document")
    if head.startswith(OLE_MAGIC):
        raise BadInput(
            "the file is an encrypted (password-protected) Office document or a legacy .doc/.xls/.ppt "
            "file: remove the password or save it as .docx/.xlsx/.pptx"
        )
    if ext in ("pdf", "docx", "pptx", "xlsx"):
        raise BadInput(f"the file is named .{ext} but its content is not a valid {ext.upper()} (corrupt?)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) < 2048 or exc.start < len(head) - 4:  # not a multi-byte char cut at the end
            raise BadInput("unsupported document format (not PDF, Office, HTML, Markdown or text)") from exc
        text = head.decode("utf-8", errors="ignore")
    if ext in ("html", "md", "text"):
        return ext
    lowered = text.lstrip().lower()
    return "html" if lowered.startswith(("<!doctype html", "<html")) else "text"


@cache
def _office_converter() -> Any:
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import DocumentConverter

    fmts = [InputFormat.DOCX, InputFormat.PPTX, InputFormat.XLSX, InputFormat.HTML, InputFormat.MD]
    return DocumentConverter(allowed_formats=fmts)


def _convert_docling(path: Path, fmt: str, job: JobInput) -> Rendered:
    from docling.datamodel.base_models import ConversionStatus

    # docling picks the backend from the extension: give it one that matches the detected format
    link = job.temp_dir / f"document.{fmt}"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(path.resolve())
    res = _office_converter().convert(link, raises_on_error=False)
    if res.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        errors = "; ".join(e.error_message for e in res.errors) or str(res.status)
        raise BadInput(f"docling could not read the {fmt.upper()} document: {errors}")
    return render_docling([res.document], paginated=fmt in PAGINATED, marker=PAGINATED.get(fmt, ""))


def _convert_text(path: Path) -> Rendered:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte decodes: old single-byte text files
    out = Rendered()
    out.add(text.replace("\r\n", "\n"))
    return out


class DocumentProcessor:
    content_types = ("document",)

    def available(self) -> tuple[bool, str]:
        """docling (and pypdfium2, which it brings) must be importable."""
        for mod in ("docling", "pypdfium2"):
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed: pip install '.[worker,documents]'"
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        """Convert the job's file to markdown with page/section references."""
        if job.path is None:
            raise BadInput("a document job needs a file")
        name = job.file_name or job.path.name
        job.progress(0.02, "detecting format")
        fmt = detect_format(job.path, name)
        meta: dict[str, Any] = {"format": fmt, "file_name": name, "page_count": None}
        if fmt == "pdf":
            from worker.processors.doc_pdf import convert_pdf

            out, pdf_meta = convert_pdf(job.path, job, config)
            meta.update(pdf_meta)
            meta["pages_note"] = "pages[i].start/end are character offsets of that page in the markdown"
        elif fmt == "text":
            out = _convert_text(job.path)
            meta["pipeline"] = "text"
        else:
            job.progress(0.1, f"converting {fmt.upper()} with docling")
            out = _convert_docling(job.path, fmt, job)
            meta["pipeline"] = "docling-simple"
            if fmt in PAGINATED:
                meta["page_count"] = len(out.pages)
        markdown = out.markdown
        if not markdown.strip() or not any(ch.isalnum() for ch in markdown):
            hint = " (a scanned PDF needs tesseract for OCR)" if fmt == "pdf" else ""
            raise BadInput(f"the document has no readable text{hint}")
        if fmt == "pdf":
            title = meta.pop("pdf_title", None)
        else:
            title = next((s["heading"] for s in out.sections if s["level"] <= 2), None)
        meta["title"] = title or Path(name).stem
        meta["sections"] = out.sections
        meta["pages"] = out.pages or None
        meta.setdefault("pages_note", PAGES_NOTE.get(fmt))
        meta["characters"] = len(markdown)
        job.progress(1.0, "done")
        return ProcessResult(markdown=markdown, metadata=meta)
