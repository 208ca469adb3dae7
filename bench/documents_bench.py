"""Document throughput: pages per second for the offline PDF (docling text pipeline) and DOCX paths.

    .venv/bin/python bench/documents_bench.py [--pages 50] [--repeats 3]

Generates a ``--pages``-page text PDF (reportlab) and a DOCX with one heading, list, table and about
a page of text per section (python-docx), runs them through ``DocumentProcessor`` end to end with
an empty ``docling_artifacts`` folder (so the PDF takes the explicit model-free fallback, as
offline), plus a one-page scanned PDF (tesseract OCR). The first run of each is a warm-up (imports,
converter set-up) and not timed, as in a long-running worker. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures import documents as fx
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.documents import DocumentProcessor


def _time(path: Path, config: ProcessorConfig, repeats: int) -> tuple[float, dict[str, object]]:
    proc = DocumentProcessor()
    job = JobInput("document", {}, path.parent, path=path, file_name=path.name)
    meta = proc.process(job, config).metadata  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc.process(job, config)
        times.append(time.perf_counter() - start)
    return statistics.median(times), meta


def main() -> None:
    """Generate the inputs, time each path, print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "artifacts").mkdir()
        config = ProcessorConfig(docling_artifacts=root / "artifacts")
        cases: list[tuple[str, Callable[[], Path], int]] = [
            (
                "PDF, docling text pipeline (offline fallback)",
                lambda: fx.make_pdf(root / "b.pdf", args.pages),
                0,
            ),
            ("DOCX, docling simple pipeline", lambda: fx.make_docx(root / "b.docx", sections=args.pages), 0),
            ("Scanned PDF, tesseract OCR (300 dpi)", lambda: fx.make_scanned_pdf(root / "s.pdf"), 1),
        ]
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print("\n| Path | Pages | Median seconds | Pages / s | Pipeline |")
        print("|---|---|---|---|---|")
        for label, make, fixed_pages in cases:
            path = make()
            seconds, meta = _time(path, config, args.repeats)
            pages = fixed_pages or int(meta.get("page_count") or args.pages)  # DOCX: sections as pages
            print(f"| {label} | {pages} | {seconds:.2f} | {pages / seconds:.1f} | {meta['pipeline']} |")


if __name__ == "__main__":
    main()
