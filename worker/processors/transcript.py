"""Transcript markdown: timestamps, paragraphs split at pauses, and subtitle (VTT/SRT) parsing.

Shared by the audio, video and media-URL processors so every transcript reads the same whatever
produced it (Whisper or a site's subtitles).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_PARAGRAPH_GAP_S = 2.0


@dataclass
class Segment:
    start: float
    end: float
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}


def format_timestamp(seconds: float, force_hours: bool = False) -> str:
    """``MM:SS``, or ``HH:MM:SS`` from one hour on (or when ``force_hours``)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours or force_hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def paragraphs(segments: list[Segment], gap_s: float = DEFAULT_PARAGRAPH_GAP_S) -> list[tuple[float, str]]:
    """Group segments into (start, text) paragraphs, starting a new one at a pause >= ``gap_s``."""
    result: list[tuple[float, list[str]]] = []
    last_end: float | None = None
    for seg in segments:
        if not seg.text.strip():
            continue
        if last_end is None or seg.start - last_end >= gap_s:
            result.append((seg.start, []))
        result[-1][1].append(seg.text.strip())
        last_end = seg.end
    return [(start, " ".join(parts)) for start, parts in result]


def word_count(segments: list[Segment]) -> int:
    """Number of whitespace-separated words in all segments."""
    return sum(len(seg.text.split()) for seg in segments)


def render(
    title: str,
    meta_lines: list[tuple[str, str]],
    segments: list[Segment],
    gap_s: float = DEFAULT_PARAGRAPH_GAP_S,
    sections: list[tuple[str, str]] | None = None,
    empty_note: str | None = None,
) -> str:
    """The markdown document: title, metadata list, extra sections, then the timestamped transcript."""
    long_form = bool(segments) and max(seg.end for seg in segments) >= 3600
    lines = [f"# {title}", "", "## Metadata", ""]
    lines += [f"- **{key}:** {value}" for key, value in meta_lines]
    for heading, body in sections or []:
        lines += ["", f"## {heading}", "", body.rstrip()]
    lines += ["", "## Transcript", ""]
    paras = paragraphs(segments, gap_s)
    if not paras:
        lines.append(f"_{empty_note or 'No speech detected.'}_")
    for start, text in paras:
        lines += [f"[{format_timestamp(start, long_form)}] {text}", ""]
    return "\n".join(lines).rstrip() + "\n"


_CUE_TIME = re.compile(
    r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})\s*-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})"
)
_TAG = re.compile(r"<[^>]+>")


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_subtitles(text: str) -> list[Segment]:
    """Segments from WebVTT or SRT text (cue settings, tags and repeated rolling lines dropped)."""
    segments: list[Segment] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = block.strip().split("\n")
        for i, line in enumerate(lines):
            match = _CUE_TIME.search(line)
            if not match:
                continue
            g = match.groups()
            cue = " ".join(_TAG.sub("", ln).strip() for ln in lines[i + 1 :])
            cue = html.unescape(re.sub(r"\s+", " ", cue)).strip()
            # Auto captions repeat the previous line as the cue rolls; keep each line once.
            if cue and not (segments and segments[-1].text == cue):
                segments.append(Segment(_seconds(*g[0:4]), _seconds(*g[4:8]), cue))
            break
    return segments
