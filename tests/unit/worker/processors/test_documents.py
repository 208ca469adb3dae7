"""DocumentProcessor on generated files: structure, words, pages, OCR and bad inputs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures import documents as fx
from worker.errors import BadInput
from worker.processors import doc_layout, doc_pdf
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.documents import OLE_MAGIC, DocumentProcessor, detect_format


@pytest.fixture
def offline_config(tmp_path: Path) -> ProcessorConfig:
    """An empty artifacts folder: the layout models are surely absent, so the PDF path falls back."""
    empty = tmp_path / "artifacts"
    empty.mkdir()
    return ProcessorConfig(docling_artifacts=empty)


def run(
    path: Path, config: ProcessorConfig | None = None, name: str | None = None, **options
) -> ProcessResult:
    temp = path.parent / f"job-{path.stem}"
    temp.mkdir(exist_ok=True)
    seen: list[float] = []
    job = JobInput(
        "document",
        options,
        temp,
        path=path,
        file_name=name or path.name,
        progress=lambda f, m: seen.append(f),
    )
    result = DocumentProcessor().process(job, config or ProcessorConfig())
    assert seen and seen[-1] == 1.0
    return result


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_table(md: str) -> None:
    assert "| Northwind" in md and "4200" in md and "Southgate" in md and "|---" in md.replace("-|-", "|-")


def test_docx_headings_list_table(tmp_path: Path) -> None:
    res = run(fx.make_docx(tmp_path / "r.docx"))
    md = res.markdown
    assert f"## {fx.HEADING}" in md and f"### {fx.SUBHEADING}" in md
    assert "- alpha item" in md and "- charlie item" in md
    assert "- charlie item\n\n| Region" in md  # a table right after a list needs a blank line
    assert_table(md)
    meta = res.metadata
    assert meta["format"] == "docx" and meta["pipeline"] == "docling-simple" and meta["title"] == fx.HEADING
    assert [s["heading"] for s in meta["sections"]] == [fx.HEADING, fx.SUBHEADING]
    assert meta["pages"] is None and "no fixed pages" in meta["pages_note"]


def test_docx_without_extension_is_detected_from_bytes(tmp_path: Path) -> None:
    path = fx.make_docx(tmp_path / "r.docx").rename(tmp_path / "upload.bin")
    assert detect_format(path, "upload.bin") == "docx"
    assert fx.SUBHEADING in run(path).markdown


def test_pptx_slides_are_pages(tmp_path: Path) -> None:
    res = run(fx.make_pptx(tmp_path / "s.pptx"))
    assert f"# {fx.HEADING}" in res.markdown and "- bravo item" in res.markdown
    assert res.metadata["page_count"] == 2
    sections = {s["heading"]: s for s in res.metadata["sections"]}
    assert sections[fx.SUBHEADING]["page_start"] == 2
    page2 = res.metadata["pages"][1]
    assert "bravo item" in res.markdown[page2["start"] : page2["end"]]


def test_xlsx_table(tmp_path: Path) -> None:
    res = run(fx.make_xlsx(tmp_path / "t.xlsx"))
    assert_table(res.markdown)
    assert res.metadata["format"] == "xlsx"
    # The sheet's name is a heading and a section, so a reader and a citation know the sheet.
    assert "## Revenue" in res.markdown
    assert res.metadata["sections"][0] == {"heading": "Revenue", "level": 2, "page_start": 1, "page_end": 1}


@pytest.mark.parametrize(
    ("maker", "fmt"), [(fx.make_html, "html"), (fx.make_markdown, "md")], ids=["html", "markdown"]
)
def test_html_and_markdown(tmp_path: Path, maker: Callable[[Path], Path], fmt: str) -> None:
    res = run(maker(tmp_path / f"doc.{fmt}"))
    assert f"# {fx.HEADING}" in res.markdown and f"## {fx.SUBHEADING}" in res.markdown
    assert "- alpha item" in res.markdown
    assert_table(res.markdown)
    assert res.metadata["format"] == fmt and res.metadata["title"] == fx.HEADING


def test_plain_text(tmp_path: Path) -> None:
    res = run(fx.make_text(tmp_path / "notes.txt"))
    assert fx.PARAGRAPH in res.markdown and res.metadata["pipeline"] == "text"
    assert res.metadata["title"] == "notes"


def test_pdf_text_pipeline_fallback_has_words_and_pages(
    tmp_path: Path, offline_config: ProcessorConfig
) -> None:
    res = run(fx.make_pdf(tmp_path / "p.pdf", pages=3), offline_config)
    meta, md = res.metadata, res.markdown
    assert meta["pipeline"] == "docling-native-text"
    assert "lack docling-project/docling-layout-heron" in meta["pipeline_fallback_reason"]
    assert meta["page_count"] == 3 and meta["title"] == fx.HEADING
    assert [p["page"] for p in meta["pages"]] == [1, 2, 3]
    for page in meta["pages"]:  # each page's range holds that page's marker word
        assert f"marker{page['page']}word" in md[page["start"] : page["end"]]
    assert "## Page 2" in md and f"### Chapter 2 {fx.HEADING}" in md
    assert [(s["heading"], s["page_start"]) for s in meta["sections"]][1] == (f"Chapter 2 {fx.HEADING}", 2)
    assert fx.PARAGRAPH in md


def test_layout_failure_falls_back_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError("model file missing")

    monkeypatch.setattr(doc_pdf, "layout_unavailable_reason", lambda artifacts: None)
    monkeypatch.setattr(doc_pdf, "_layout_converter", broken)
    res = run(fx.make_pdf(tmp_path / "p.pdf", pages=1))
    assert res.metadata["pipeline"] == "docling-native-text"
    assert "layout pipeline failed: OSError: model file missing" in res.metadata["pipeline_fallback_reason"]


def test_layout_check_offline_is_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    doc_layout.layout_unavailable_reason.cache_clear()
    monkeypatch.setattr(doc_layout, "_cached_in_hf", lambda repo: False)
    try:
        assert "not cached and HF_HUB_OFFLINE is set" in (doc_layout.layout_unavailable_reason(None) or "")
    finally:
        doc_layout.layout_unavailable_reason.cache_clear()


def test_artifacts_folder_with_models_is_accepted(tmp_path: Path) -> None:
    for repo in doc_layout.LAYOUT_REPOS:
        (tmp_path / repo.replace("/", "--")).mkdir()
    assert doc_layout.layout_unavailable_reason(tmp_path) is None


def test_scanned_pdf_is_ocred(tmp_path: Path, offline_config: ProcessorConfig) -> None:
    res = run(fx.make_scanned_pdf(tmp_path / "scan.pdf"), offline_config)
    for word in fx.OCR_WORDS:
        assert word in res.markdown
    assert res.metadata["ocr_pages"] == [1]


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (lambda p: fx.make_pdf(p / "e.pdf", pages=1, encrypt="secret"), "encrypted"),
        (lambda p: fx.make_corrupt_pdf(p / "c.pdf"), "corrupt"),
        (lambda p: fx.make_empty_pdf(p / "z.pdf"), "no pages"),
        (lambda p: fx.make_empty_docx(p / "z.docx"), "no readable text"),
        (lambda p: _write(p / "e.txt", b""), "empty (0 bytes)"),
        (lambda p: _write(p / "x.docx", b"PK\x03\x04broken" * 9), "corrupt zip"),
        (lambda p: _write(p / "x.docx", OLE_MAGIC + b"\0" * 600), "password"),
        (lambda p: _write(p / "x.bin", bytes(range(256)) * 20), "unsupported"),
    ],
    ids=[
        "encrypted-pdf",
        "corrupt-pdf",
        "zero-page-pdf",
        "empty-docx",
        "empty-file",
        "corrupt-docx",
        "encrypted-office",
        "binary",
    ],
)
def test_bad_inputs(
    tmp_path: Path, offline_config: ProcessorConfig, maker: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as info:
        run(maker(tmp_path), offline_config)
    assert info.value.retryable is False


def test_separate_tables_leaves_code_and_tables_alone() -> None:
    from worker.processors.doc_render import separate_tables

    assert separate_tables("- a\n| x |\n|---|") == "- a\n\n| x |\n|---|"
    assert separate_tables("text\n\n| x |\n| y |") == "text\n\n| x |\n| y |"
    assert separate_tables("```\ncode\n| not a table |\n```") == "```\ncode\n| not a table |\n```"
