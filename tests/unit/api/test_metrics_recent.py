"""``morag_processing_seconds_recent`` comes from this process's window, not a scan of ended jobs."""

from __future__ import annotations

import time

from api.metrics import RecentSpans


def test_the_recent_window_averages_by_content_type_and_forgets_old_spans() -> None:
    recent = RecentSpans(window_s=60.0)
    recent.add("document", 2.0)
    recent.add("document", 4.0)
    recent.add("audio", 10.0)
    assert recent.means() == {"document": 3.0, "audio": 10.0}
    recent._spans.appendleft((time.monotonic() - 61.0, "document", 100.0))  # older than the window
    assert recent.means() == {"document": 3.0, "audio": 10.0}
    assert len(recent._spans) == 3
