"""Web pages install light: the web processor works with httpx + trafilatura, without docling/torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]


def test_web_extraction_never_imports_docling_or_torch() -> None:
    script = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"docling", "docling_core", "torch", "transformers", "faster_whisper"}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Blocker())
        from worker.processors import availability
        from worker.processors.web import extract_html
        assert availability("web") == (True, ""), availability("web")
        html = b"<html><head><title>T</title></head><body><article><h1>Light</h1>"
        html += b"<p>" + b"Words about harbours and lighthouses. " * 20 + b"</p></article></body></html>"
        md, meta = extract_html(html, "http://example.test/page")
        assert "harbours" in md and meta["title"], (md, meta)
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok []")


def test_the_web_extra_is_declared_without_docling() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0] for dep in extras["web"]}
    assert "trafilatura" in names and not names & {"docling", "torch"}
