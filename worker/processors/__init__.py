"""Processor registry: content type -> processor class, imported lazily.

A processor whose libraries are missing is simply not offered by the worker; ``worker check``
says what to install.
"""

from __future__ import annotations

import importlib
from functools import cache

from worker.processors.base import Processor

REGISTRY: dict[str, str] = {
    "echo": "worker.processors.echo:EchoProcessor",
    "audio": "worker.processors.audio:AudioProcessor",
    "video": "worker.processors.video:VideoProcessor",
    "youtube": "worker.processors.youtube:YoutubeProcessor",
    "document": "worker.processors.documents:DocumentProcessor",
    "web": "worker.processors.web:WebProcessor",
    "image": "worker.processors.image:ImageProcessor",
}

# The pyproject extra that brings each processor's libraries (docs/worker-setup.md lists them).
EXTRAS = {
    "audio": "media",
    "video": "media",
    "youtube": "media",
    "web": "web",
    "document": "documents",
    "image": "documents",
}


@cache
def load_processor(content_type: str) -> Processor | None:
    """The processor instance for a content type, or None when its code cannot be imported."""
    target = REGISTRY.get(content_type)
    if target is None:
        return None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    proc: Processor = getattr(module, cls_name)()
    return proc


def availability(content_type: str) -> tuple[bool, str]:
    """(True, "") when the content type can be processed here, else (False, the fix)."""
    proc = load_processor(content_type)
    if proc is None:
        return (
            False,
            f"the processor for {content_type!r} cannot be imported: "
            f"pip install '.[worker,{EXTRAS.get(content_type, 'media')}]'",
        )
    return proc.available()


def available_content_types() -> list[str]:
    return [ct for ct in REGISTRY if availability(ct)[0]]
