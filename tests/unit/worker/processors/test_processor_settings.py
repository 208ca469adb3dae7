"""Processor settings named in the docs and logs exist as flags / variables and reach the processor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.__main__ import parse_config
from worker.processors.base import JobInput


def test_docling_artifacts_flag_and_variable_reach_the_processor_config(tmp_path: Path) -> None:
    _, cfg = parse_config(["--api-key", "K", "--docling-artifacts", str(tmp_path)], env={})
    assert cfg.processor_config().docling_artifacts == tmp_path
    _, cfg = parse_config(
        [], env={"MORAG_WORKER_API_KEY": "K", "MORAG_WORKER_DOCLING_ARTIFACTS": str(tmp_path)}
    )
    assert cfg.processor_config().docling_artifacts == tmp_path


def test_other_processor_settings_reach_the_processor_config() -> None:
    env = {
        "MORAG_WORKER_API_KEY": "K",
        "MORAG_WORKER_MAX_DOWNLOAD_MB": "3",
        "MORAG_WORKER_FETCH_TIMEOUT": "7",
        "MORAG_WORKER_FFMPEG_TIMEOUT": "11",
    }
    _, cfg = parse_config([], env=env)
    pc = cfg.processor_config()
    assert (pc.max_download_bytes, pc.fetch_timeout_s, pc.ffmpeg_timeout_s) == (3 * 1024**2, 7.0, 11.0)


def test_docling_artifacts_reach_doclings_pipeline_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("docling")
    from docling.datamodel.base_models import InputFormat

    from worker.processors import doc_pdf

    artifacts = tmp_path / "models"
    for repo in ("docling-project--docling-layout-heron", "docling-project--docling-models"):
        (artifacts / repo).mkdir(parents=True)
    _, cfg = parse_config(["--api-key", "K", "--docling-artifacts", str(artifacts)], env={})
    built: list[Any] = []
    real = doc_pdf._layout_converter.__wrapped__

    def spy(path: Path | None, lang: str) -> Any:
        converter = real(path, lang)
        built.append(converter)
        raise RuntimeError("stop after building the converter")  # no models to run: the fallback runs

    monkeypatch.setattr(doc_pdf, "_layout_converter", spy)
    pdf = tmp_path / "a.pdf"
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(pdf))
    c.drawString(72, 720, "Hello artifacts")
    c.save()
    _out, meta = doc_pdf.convert_pdf(
        pdf, JobInput("document", {}, tmp_path, path=pdf), cfg.processor_config()
    )
    (converter,) = built
    options = converter.format_to_options[InputFormat.PDF].pipeline_options
    assert Path(options.artifacts_path) == artifacts
    assert (
        meta["pipeline"] == "docling-native-text"
        and "stop after building" in meta["pipeline_fallback_reason"]
    )
