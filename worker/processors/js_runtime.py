"""What yt-dlp needs for YouTube since its 2025.11 releases: a JavaScript runtime (Deno) and the
``yt-dlp-ejs`` scripts it runs there. Both ship on PyPI (``deno``, ``yt-dlp-ejs``) in the media
extra. Other sites yt-dlp downloads from work without them.
"""

from __future__ import annotations

import importlib.util
import shutil

INSTALL_HINT = "pip install '.[worker,media]' (it brings the deno and yt-dlp-ejs packages)"


def deno_path() -> str | None:
    """The deno executable: on PATH, else the one the PyPI package ``deno`` installed."""
    found = shutil.which("deno")
    if found:
        return found
    if importlib.util.find_spec("deno") is None:
        return None
    try:
        import deno

        return str(deno.find_deno_bin())
    except Exception:  # a package without its binary (wrong platform wheel)
        return None


def youtube_ready() -> tuple[bool, str]:
    """(True, what was found) when YouTube downloads can work, else (False, what is missing)."""
    missing = []
    path = deno_path()
    if path is None:
        missing.append("the Deno JavaScript runtime")
    if importlib.util.find_spec("yt_dlp_ejs") is None:
        missing.append("yt-dlp-ejs")
    if missing:
        return False, f"YouTube needs {' and '.join(missing)}: {INSTALL_HINT}"
    return True, f"deno at {path}, yt-dlp-ejs installed"


def yt_dlp_options() -> dict[str, object]:
    """The yt-dlp parameter that points it at our deno (it looks only on PATH by itself)."""
    path = deno_path()
    return {"js_runtimes": {"deno": {"path": path}}} if path else {}
