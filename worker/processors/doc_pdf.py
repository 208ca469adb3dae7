"""PDF to markdown: docling's layout pipeline when its models load, else its model-free text pipeline.

The fallback is explicit: it is logged and the metadata carries ``pipeline_fallback_reason``. Pages
without a text layer (scans) are OCR'd with tesseract: by docling itself in the layout pipeline, by
rendering the page (pypdfium2) and running pytesseract in the text pipeline.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from worker.errors import BadInput, WorkerError
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.doc_layout import layout_unavailable_reason
from worker.processors.doc_render import Rendered, body_height, native_blocks, native_lines, render_docling

log = logging.getLogger(__name__)

BATCH_PAGES = 10  # pages per docling call: progress (and cancellation) between batches
OCR_DPI = 300


@dataclass
class PdfInfo:
    page_count: int
    title: str | None
    chars_per_page: list[int]


def _has_no_pages(path: Path) -> bool:
    data = path.read_bytes()[:20_000_000]
    return bool(re.search(rb"/Count\s*0\b", data)) and not re.search(rb"/Type\s*/Page(?![a-zA-Z])", data)


def inspect_pdf(path: Path) -> PdfInfo:
    """Open the PDF with pdfium; raise BadInput for encrypted, corrupt or zero-page files."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if _has_no_pages(path):  # pdfium refuses a PDF without pages, with no clear error
            raise BadInput("the PDF has no pages") from exc
        if "password" in str(exc).lower():
            raise BadInput(
                "the PDF is encrypted (password-protected): remove the password and upload it again"
            ) from exc
        raise BadInput(f"the PDF is corrupt or not a PDF: {exc}") from exc
    try:
        if len(pdf) == 0:
            raise BadInput("the PDF has no pages")
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
        title = None if title.lower() in ("", "untitled") else title  # reportlab's and others' default
        chars = []
        for i in range(len(pdf)):
            page = pdf[i]
            chars.append(page.get_textpage().count_chars())
            page.close()
        return PdfInfo(len(pdf), title, chars)
    finally:
        pdf.close()


@cache
def _native_converter() -> Any:
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption
    from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

    opts = NativePdfPipelineOptions(generate_page_images=False, generate_picture_images=False)
    fmt = PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=opts)
    return DocumentConverter(allowed_formats=[InputFormat.PDF], format_options={InputFormat.PDF: fmt})


@cache
def _layout_converter(artifacts: Path | None, ocr_lang: str) -> Any:
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import PdfPipelineOptions, TesseractCliOcrOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption

    opts = PdfPipelineOptions(artifacts_path=artifacts, do_ocr=True, do_table_structure=True)
    if shutil.which("tesseract"):
        opts.ocr_options = TesseractCliOcrOptions(lang=ocr_lang.split("+"))
    fmt = PdfFormatOption(pipeline_options=opts)
    return DocumentConverter(allowed_formats=[InputFormat.PDF], format_options={InputFormat.PDF: fmt})


def _convert_batches(
    converter: Any, path: Path, info: PdfInfo, job: JobInput, lo: float, hi: float
) -> list[Any]:
    from docling.datamodel.base_models import ConversionStatus

    docs = []
    for first in range(1, info.page_count + 1, BATCH_PAGES):
        last = min(first + BATCH_PAGES - 1, info.page_count)
        job.progress(
            lo + (hi - lo) * (first - 1) / info.page_count, f"pages {first}-{last} of {info.page_count}"
        )
        res = converter.convert(path, raises_on_error=False, page_range=(first, last))
        if res.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
            errors = "; ".join(e.error_message for e in res.errors) or str(res.status)
            raise BadInput(f"docling could not read the PDF: {errors}")
        docs.append(res.document)
    return docs


def ocr_page(path: Path, page_index: int, lang: str) -> str:
    """Render one page and OCR it with tesseract."""
    import pypdfium2 as pdfium
    import pytesseract

    pdf = pdfium.PdfDocument(str(path))
    try:
        image = pdf[page_index].render(scale=OCR_DPI / 72).to_pil()
    finally:
        pdf.close()
    text: str = pytesseract.image_to_string(image, lang=lang)
    return text.strip()


def _native_markdown(
    docs: list[Any], path: Path, info: PdfInfo, job: JobInput, lang: str
) -> tuple[Rendered, list[int]]:
    per_page: dict[int, list[Any]] = {}
    for doc in docs:
        per_page.update(native_lines(doc))
    body = body_height([line for lines in per_page.values() for line in lines])
    out, ocr_pages = Rendered(), []
    for n in range(1, info.page_count + 1):
        lines = per_page.get(n, [])
        if lines:
            blocks = native_blocks(lines, body)
        elif info.chars_per_page[n - 1] == 0 and shutil.which("tesseract"):
            job.progress(0.8, f"OCR of page {n}")
            text = ocr_page(path, n - 1, lang)
            blocks = [(p.replace("\n", " ").strip(), False) for p in text.split("\n\n") if p.strip()]
            ocr_pages.append(n)
        else:
            blocks = []
        body_md = ""
        for text, is_heading in blocks:
            if is_heading:
                out.section(text, 3, n)
            body_md += f"### {text}\n\n" if is_heading else f"{text}\n\n"
        out.add_page(n, f"## Page {n}", body_md)
        out.touch_page(n)
    if not out.sections:  # no heading stood out: each page is a section
        out.sections = [
            {"heading": f"Page {p['page']}", "level": 2, "page_start": p["page"], "page_end": p["page"]}
            for p in out.pages
        ]
    return out, ocr_pages


def convert_pdf(path: Path, job: JobInput, config: ProcessorConfig) -> tuple[Rendered, dict[str, Any]]:
    """Markdown + metadata of a PDF; raises BadInput for encrypted, corrupt or empty PDFs."""
    info = inspect_pdf(path)
    lang = str(job.options.get("ocr_lang") or job.options.get("language") or "eng")
    meta: dict[str, Any] = {"page_count": info.page_count, "pdf_title": info.title}
    reason = layout_unavailable_reason(config.docling_artifacts)
    if reason is None:
        try:
            docs = _convert_batches(
                _layout_converter(config.docling_artifacts, lang), path, info, job, 0.1, 0.9
            )
            out = render_docling(docs, paginated=True)
            scanned = [i + 1 for i, c in enumerate(info.chars_per_page) if c == 0]
            meta.update(pipeline="docling-layout", ocr_pages=scanned)
            meta["pdf_title"] = info.title or next((s["heading"] for s in out.sections), None)
            return out, meta
        except WorkerError:
            raise
        except Exception as exc:  # models missing or broken: fall back below, saying why
            reason = f"the layout pipeline failed: {type(exc).__name__}: {exc}"
    log.warning("PDF %s: using docling's text pipeline instead of the layout pipeline: %s", path.name, reason)
    docs = _convert_batches(_native_converter(), path, info, job, 0.1, 0.8)
    out, ocr_pages = _native_markdown(docs, path, info, job, lang)
    meta.update(pipeline="docling-native-text", pipeline_fallback_reason=reason, ocr_pages=ocr_pages)
    meta["pdf_title"] = info.title or next((s["heading"] for s in out.sections if s["level"] == 3), None)
    return out, meta
