"""docs/client-api.md stays true: every ``morag`` line parses, every Python block compiles and
names only methods the client has, every curl path is a route of openapi.json."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from client import MoragClient
from client.arguments import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "client-api.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", DOC, re.S)


def _morag_lines() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang == "bash":
            lines += [line.split("  #")[0].strip() for line in body.splitlines() if line.startswith("morag ")]
    return lines


@pytest.mark.parametrize("line", _morag_lines())
def test_every_morag_line_parses(line: str) -> None:
    build_parser().parse_args(shlex.split(line)[1:])


def test_docs_show_every_command() -> None:
    shown = {shlex.split(line)[1] for line in _morag_lines()}
    assert shown >= {
        "ingest",
        "process",
        "status",
        "list",
        "cancel",
        "retry",
        "search",
        "documents",
        "workers",
        "cookies",
        "queues",
        "prune",
    }


def test_python_blocks_compile_and_call_real_methods() -> None:
    blocks = [body for lang, body in BLOCKS if lang == "python"]
    assert len(blocks) >= 6
    for body in blocks:
        compile(body, "client-api.md", "exec")
        for name in re.findall(r"\bmorag\.(\w+)\(", body):
            assert hasattr(MoragClient, name), name


def test_curl_paths_are_routes() -> None:
    spec = json.loads((ROOT / "openapi.json").read_text())
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in spec["paths"]]
    paths = re.findall(r"\$MORAG(/[\w/.-]+)", DOC)
    assert len(paths) > 15
    for path in paths:
        assert any(p.match(path) for p in patterns), path
