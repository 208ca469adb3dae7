"""The ``web`` processor: fetch a page and extract its main content as markdown (trafilatura).

A URL that serves a PDF or an office document goes to the document processor, an image to the
image processor, audio/video to the media processors when this worker has them. Metadata has
title, author, date, canonical URL, site name and the content's links.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin

from worker.errors import BadInput, Unsupported
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.web_fetch import Fetched, fetch

HTML_TYPES = {"text/html", "application/xhtml+xml", ""}
DOCUMENT_TYPES = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/plain": "txt",
    "text/markdown": "md",
}
LINK_RE = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def _fix_tables(md: str) -> str:
    """trafilatura writes table rows without the header separator GFM needs: add it."""
    out: list[str] = []
    lines = md.splitlines()
    for i, line in enumerate(lines):
        out.append(line.rstrip())
        is_row = line.lstrip().startswith("|")
        starts_table = is_row and (i == 0 or not lines[i - 1].lstrip().startswith("|"))
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if starts_table and not re.fullmatch(r"\|?\s*:?-{3,}.*", nxt):
            cells = max(line.strip().strip("|").count("|") + 1, 1)
            out.append("|" + "---|" * cells)
    return "\n".join(out)


def extract_html(raw: bytes, url: str) -> tuple[str, dict[str, Any]]:
    """(markdown, metadata) of a page's main content; BadInput when there is none."""
    import trafilatura

    body = trafilatura.extract(
        raw,
        url=url,
        output_format="markdown",
        include_links=True,
        include_tables=True,
        include_formatting=True,
        include_images=False,
    )
    if not body or not any(ch.isalnum() for ch in body):
        raise BadInput(f"no readable content found at {url} (empty page, or content built by JavaScript)")
    doc = trafilatura.extract_metadata(raw, default_url=url)
    info = doc.as_dict() if doc is not None else {}
    title = info.get("title") or url
    body = _fix_tables(body.strip())
    links: list[dict[str, str]] = []
    for text, href in LINK_RE.findall(body):
        absolute = urljoin(url, href)
        if absolute not in {link["url"] for link in links}:
            links.append({"text": text, "url": absolute})
    meta = {
        "title": title,
        "author": info.get("author"),
        "date": info.get("date"),
        "canonical_url": info.get("url") or url,
        "sitename": info.get("sitename"),
        "description": info.get("description"),
        "language": info.get("language"),
        "links": links,
    }
    heading = "" if body.startswith("# ") else f"# {title}\n\n"
    return f"{heading}{body}\n", meta


def _delegate(
    content_type: str, fetched: Fetched, job: JobInput, config: ProcessorConfig, suffix: str
) -> ProcessResult:
    module_name = {"document": "documents"}.get(content_type, content_type)
    try:
        module = importlib.import_module(f"worker.processors.{module_name}")
    except ImportError as exc:
        raise Unsupported(
            f"{fetched.url} is {fetched.content_type}; this worker cannot process {content_type}"
        ) from exc
    proc = getattr(module, f"{content_type.capitalize()}Processor")()
    ok, why = proc.available()
    if not ok:
        raise Unsupported(f"{fetched.url} is {fetched.content_type}; this worker cannot process it: {why}")
    path = fetched.path.rename(fetched.path.with_suffix(suffix))
    name = fetched.url.rstrip("/").rsplit("/", 1)[-1] or f"download{suffix}"
    sub = replace(job, content_type=content_type, path=path, file_name=name)
    result: ProcessResult = proc.process(sub, config)
    result.metadata.update(source_url=job.url, final_url=fetched.url, http_content_type=fetched.content_type)
    return result


class WebProcessor:
    content_types = ("web",)

    def available(self) -> tuple[bool, str]:
        """httpx and trafilatura must be importable."""
        for mod in ("httpx", "trafilatura"):
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed: pip install '.[worker,web]'"
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        """Fetch ``job.url`` and return its main content as markdown."""
        if not job.url:
            raise BadInput("a web job needs a URL")
        job.progress(0.05, f"fetching {job.url}")
        fetched = fetch(job.url, job, config)
        ctype = fetched.content_type
        job.progress(0.5, f"extracting {ctype or 'page'}")
        if ctype in DOCUMENT_TYPES:
            return _delegate("document", fetched, job, config, "." + DOCUMENT_TYPES[ctype])
        if ctype.startswith("image/"):
            return _delegate("image", fetched, job, config, "." + ctype.split("/")[1].split("+")[0])
        if ctype.startswith(("audio/", "video/")):
            kind = ctype.split("/")[0]
            if importlib.util.find_spec(f"worker.processors.{kind}") is None:
                raise BadInput(
                    f"{fetched.url} is {kind} ({ctype}): submit it as content type {kind} or youtube"
                )
            return _delegate(kind, fetched, job, config, "." + ctype.split("/")[1])
        if ctype not in HTML_TYPES and not ctype.endswith(("+xml", "/xml")):
            raise BadInput(f"{fetched.url} serves {ctype}, which is not a web page or document")
        markdown, meta = extract_html(fetched.path.read_bytes(), fetched.url)
        meta.update(source_url=job.url, final_url=fetched.url, http_content_type=ctype, bytes=fetched.size)
        job.progress(1.0, "done")
        return ProcessResult(markdown=markdown, metadata=meta)
