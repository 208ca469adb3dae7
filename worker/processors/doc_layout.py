"""Which docling PDF pipeline can run here: the full layout pipeline needs models from a hub.

The layout pipeline (layout + table-structure models, OCR for scanned pages) gives headings and
tables; it needs docling's models from the Hugging Face hub or a local copy (``--docling-artifacts``).
Offline and without a copy it fails with ``LocalEntryNotFoundError``. We decide cheaply up front
(cache lookup, then a short connection probe) instead of waiting for network timeouts, and the
caller falls back explicitly to the model-free text pipeline with the reason in the metadata.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

# The models docling's default PDF pipeline loads (layout: heron; tables: TableFormer).
LAYOUT_REPOS = ("docling-project/docling-layout-heron", "docling-project/docling-models")
HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


def _cached_in_hf(repo_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return False
    return True


def _hub_reachable(host: str = HUB_HOST, timeout: float = PROBE_TIMEOUT_S) -> bool:
    # getaddrinfo has no timeout of its own, so the probe runs in a thread we stop waiting for.
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_disabled() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@cache
def layout_unavailable_reason(artifacts: Path | None) -> str | None:
    """None when the layout pipeline's models can be loaded, else why not (cached per process)."""
    if artifacts is not None:
        missing = [r for r in LAYOUT_REPOS if not (artifacts / r.replace("/", "--")).exists()]
        if missing:
            return f"docling artifacts at {artifacts} lack {', '.join(missing)}"
        return None
    uncached = [r for r in LAYOUT_REPOS if not _cached_in_hf(r)]
    if not uncached:
        return None
    if _hub_disabled():
        return f"docling layout models {', '.join(uncached)} are not cached and HF_HUB_OFFLINE is set"
    if not _hub_reachable():
        return (
            f"docling layout models {', '.join(uncached)} are not cached and {HUB_HOST} is unreachable "
            "(point --docling-artifacts at a local copy)"
        )
    log.info("docling layout models will be downloaded from %s", HUB_HOST)
    return None
