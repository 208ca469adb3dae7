"""The ``video`` processor: ffmpeg probe + audio-track transcription + optional thumbnails/keyframes.

A video without an audio track (or without speech) is still a result: its metadata and keyframes
describe it, and the markdown says there is nothing to transcribe.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from worker.errors import BadInput, ProcessingTimeout
from worker.processors import transcript
from worker.processors.audio import SAMPLE_RATE, Transcription, media_available, transcribe_file
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult

MAX_KEYFRAMES = 50
FRAME_WIDTH = 640
FFMPEG_TIMEOUT_S = 600.0  # the default of --ffmpeg-timeout


def run_ffmpeg(stream: Any, path: Path, what: str, timeout_s: float) -> None:
    """Run an ffmpeg-python stream, killed after ``timeout_s`` (a stuck decode must not hold a slot)."""
    import ffmpeg

    proc = stream.run_async(pipe_stdout=True, pipe_stderr=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise ProcessingTimeout(
            f"ffmpeg took longer than {timeout_s:g} s to {what} of {path.name} "
            "(raise --ffmpeg-timeout / MORAG_WORKER_FFMPEG_TIMEOUT for very long media)"
        ) from exc
    if proc.returncode:
        raise ffmpeg.Error("ffmpeg", out, err)


def _ffmpeg_message(exc: Exception) -> str:
    stderr = getattr(exc, "stderr", None) or b""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else str(exc)


def _fps(rate: str | None) -> float | None:
    try:
        num, _, den = (rate or "").partition("/")
        return round(float(num) / float(den or 1), 3) if float(den or 1) else None
    except ValueError:
        return None


def ffprobe(path: Path, timeout_s: float) -> dict[str, Any]:
    """``ffmpeg.probe`` with a time limit (ffmpeg-python's has none)."""
    import json

    import ffmpeg

    args = ["ffprobe", "-show_format", "-show_streams", "-of", "json", str(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProcessingTimeout(
            f"ffprobe took longer than {timeout_s:g} s on {path.name} (--ffmpeg-timeout)"
        ) from exc
    if done.returncode != 0:
        raise ffmpeg.Error("ffprobe", done.stdout, done.stderr)
    result: dict[str, Any] = json.loads(done.stdout.decode("utf-8"))
    return result


def probe(path: Path, timeout_s: float = FFMPEG_TIMEOUT_S) -> dict[str, Any]:
    """Duration, container, and the first video/audio stream's codecs, resolution and fps."""
    import ffmpeg

    try:
        info = ffprobe(path, timeout_s)
    except ffmpeg.Error as exc:
        raise BadInput(f"cannot read video {path.name}: {_ffmpeg_message(exc)}") from exc
    streams = info.get("streams", [])
    # Cover art in audio files shows up as a video stream with attached_pic: it is not video.
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
        ),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fmt = info.get("format", {})
    duration = float(fmt.get("duration") or (video or audio or {}).get("duration") or 0)
    if video is None and audio is None:
        raise BadInput(f"{path.name} has neither a video nor an audio stream")
    meta: dict[str, Any] = {
        "duration": round(duration, 3),
        "container": fmt.get("format_name"),
        "has_video": video is not None,
        "has_audio": audio is not None,
    }
    if video is not None:
        meta.update(
            width=video.get("width"),
            height=video.get("height"),
            video_codec=video.get("codec_name"),
            fps=_fps(video.get("avg_frame_rate")) or _fps(video.get("r_frame_rate")),
        )
    if audio is not None:
        meta.update(audio_codec=audio.get("codec_name"), audio_channels=audio.get("channels"))
    return meta


def extract_audio(path: Path, out: Path, timeout_s: float = FFMPEG_TIMEOUT_S) -> Path:
    """The first audio track as a 16 kHz mono WAV (what Whisper wants)."""
    import ffmpeg

    try:
        stream = (
            ffmpeg.input(str(path))
            .output(str(out), vn=None, ac=1, ar=SAMPLE_RATE, format="wav")
            .overwrite_output()
        )
        run_ffmpeg(stream, path, "extract the audio track", timeout_s)
    except ffmpeg.Error as exc:
        raise BadInput(f"cannot extract the audio track of {path.name}: {_ffmpeg_message(exc)}") from exc
    return out


def _frame(path: Path, at: float, out: Path, timeout_s: float = FFMPEG_TIMEOUT_S) -> Path | None:
    import ffmpeg

    try:
        stream = (
            ffmpeg.input(str(path), ss=max(0.0, at))  # input-side seek: fast, lands on a keyframe
            .filter("scale", f"min({FRAME_WIDTH},iw)", -2)
            .output(str(out), vframes=1, **{"q:v": 3})
            .overwrite_output()
        )
        run_ffmpeg(stream, path, "extract a frame", timeout_s)
    except ffmpeg.Error as exc:
        raise BadInput(f"cannot extract a frame of {path.name}: {_ffmpeg_message(exc)}") from exc
    return out if out.is_file() and out.stat().st_size else None


def frames(
    path: Path, job: JobInput, duration: float, timeout_s: float = FFMPEG_TIMEOUT_S
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Thumbnail (option ``thumbnails``) and N evenly spaced keyframes (option ``keyframes``)."""
    artifacts: list[Path] = []
    listed: list[dict[str, Any]] = []
    want_thumb = job.options.get("thumbnails", False)
    count = job.options.get("keyframes", 0) or 0
    if not isinstance(want_thumb, bool):
        raise BadInput(f"option 'thumbnails' must be true or false, not {want_thumb!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadInput(f"option 'keyframes' must be a non-negative integer, not {count!r}")
    plan: list[tuple[str, str, float]] = []
    if want_thumb:
        plan.append(("thumbnail", "thumbnail.jpg", min(duration * 0.1, 10.0)))
    n = min(count, MAX_KEYFRAMES)
    # Evenly spaced over the whole video: the first N I-frames would all sit in the first minute.
    plan += [("keyframe", f"keyframe_{i:03d}.jpg", duration * (i + 0.5) / n) for i in range(n)]
    for kind, name, at in plan:
        out = _frame(path, at, job.temp_dir / name, timeout_s)
        if out is not None:
            artifacts.append(out)
            listed.append({"kind": kind, "file": name, "time": round(at, 3)})
    return artifacts, listed


def _meta_lines(meta: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [("Duration", transcript.format_timestamp(meta["duration"]))]
    if meta["has_video"]:
        lines += [
            ("Resolution", f"{meta['width']}x{meta['height']}"),
            ("Video codec", str(meta["video_codec"])),
            ("Frame rate", f"{meta['fps']} fps"),
        ]
    lines.append(("Audio", str(meta["audio_codec"]) if meta["has_audio"] else "no audio track"))
    return lines


class VideoProcessor:
    """Video file -> metadata, optional frames as artifacts, and a transcript of its audio track."""

    content_types = ("video",)

    def available(self) -> tuple[bool, str]:
        if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
            return False, "ffmpeg is not installed: apt-get install ffmpeg"
        return media_available()

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        if job.path is None:
            raise BadInput("a video job needs an uploaded file")
        name = job.file_name or job.path.name
        job.progress(0.0, "probing video")
        meta = probe(job.path, config.ffmpeg_timeout_s)
        artifacts, listed = frames(job.path, job, meta["duration"], config.ffmpeg_timeout_s)
        job.progress(0.1, f"extracted {len(artifacts)} frame(s)")
        result: Transcription | None = None
        note = "The video has no audio track."
        if meta["has_audio"]:
            wav = extract_audio(job.path, job.temp_dir / "audio.wav", config.ffmpeg_timeout_s)
            try:
                result = transcribe_file(wav, job, config, span=(0.15, 1.0))
            except BadInput as exc:
                # Music or silence under pictures is still a video worth indexing by its metadata.
                if "no speech" not in str(exc):
                    raise
                note = "No speech detected in the audio track."
        lines = _meta_lines(meta) + (result.meta_lines()[1:] if result else [])
        sections = []
        if listed:
            body = "\n".join(
                f"- {item['kind']} at {transcript.format_timestamp(item['time'])}: `{item['file']}`"
                for item in listed
            )
            sections.append(("Frames", body))
        markdown = transcript.render(
            f"Video: {name}",
            lines,
            result.segments if result else [],
            result.options.paragraph_gap_s if result else transcript.DEFAULT_PARAGRAPH_GAP_S,
            sections=sections,
            empty_note=note,
        )
        # "artifacts": the files' names (the worker uploads them under these); "frames": what each shows.
        metadata: dict[str, Any] = {
            "source": name,
            **meta,
            "artifacts": [item["file"] for item in listed],
            "frames": listed,
            "transcribed": bool(result),
        }
        if result:
            metadata.update({k: v for k, v in result.metadata().items() if k != "duration"})
        else:
            metadata.update(segments=[], word_count=0, diarization=False)
        job.progress(1.0, "done")
        return ProcessResult(markdown=markdown, metadata=metadata, artifacts=artifacts)
