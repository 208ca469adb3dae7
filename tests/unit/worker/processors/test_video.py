"""Video processor: probe, frames as artifacts, and transcription of a generated speech video."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import media
from worker.errors import BadInput
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.video import VideoProcessor

CPU = ProcessorConfig(device="cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video")
    speech = media.speech_wav(d / "speech.wav")
    full = media.make_video(d / "talk.mp4", speech, seconds=13)
    truncated = d / "truncated.mp4"
    truncated.write_bytes(full.read_bytes()[:3000])
    return {
        "talk": full,
        "mute": media.make_video(d / "mute.mp4", None, seconds=4),
        "silent": media.make_video(d / "silent.mp4", media.silent_wav(d / "silence.wav", 4), seconds=4),
        "corrupt": media.corrupt_file(d / "corrupt.mp4"),
        "truncated": truncated,
    }


def _job(path: Path, tmp_path: Path, **options: object) -> JobInput:
    work = tmp_path / "job"
    work.mkdir()
    opts = {"model": str(media.tiny_en_model()), **options}
    return JobInput(content_type="video", options=opts, temp_dir=work, path=path)


def test_speech_video_is_transcribed_with_metadata_and_frames(
    videos: dict[str, Path], tmp_path: Path
) -> None:
    progress: list[float] = []
    job = _job(videos["talk"], tmp_path, thumbnails=True, keyframes=3)
    job.progress = lambda fraction, message: progress.append(fraction)
    result = VideoProcessor().process(job, CPU)
    meta = result.metadata
    heard = " ".join(seg["text"] for seg in meta["segments"])
    assert media.word_error_rate(media.SENTENCE, heard) < 0.4, heard
    assert (meta["width"], meta["height"], meta["video_codec"], meta["fps"]) == (320, 240, "h264", 25.0)
    assert meta["audio_codec"] == "aac" and 12 < meta["duration"] < 14 and meta["transcribed"]
    assert [a["kind"] for a in meta["frames"]] == ["thumbnail", "keyframe", "keyframe", "keyframe"]
    assert [p.name for p in result.artifacts] == [a["file"] for a in meta["frames"]] == meta["artifacts"]
    for path in result.artifacts:
        assert path.parent == job.temp_dir and path.read_bytes()[:2] == b"\xff\xd8"  # JPEG
    times = [a["time"] for a in meta["frames"][1:]]
    assert times == sorted(times) and times[-1] < meta["duration"]
    assert "- **Resolution:** 320x240" in result.markdown and "[00:00] " in result.markdown
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_video_without_audio_is_processed_not_failed(videos: dict[str, Path], tmp_path: Path) -> None:
    result = VideoProcessor().process(_job(videos["mute"], tmp_path, keyframes=2), CPU)
    meta = result.metadata
    assert meta["has_audio"] is False and meta["transcribed"] is False and meta["segments"] == []
    assert len(result.artifacts) == 2 and meta["width"] == 320
    assert "no audio track" in result.markdown


def test_video_with_silent_audio_is_processed(videos: dict[str, Path], tmp_path: Path) -> None:
    result = VideoProcessor().process(_job(videos["silent"], tmp_path), CPU)
    assert result.metadata["has_audio"] is True and result.metadata["transcribed"] is False
    assert "No speech detected" in result.markdown and result.artifacts == []


@pytest.mark.parametrize("name", ["corrupt", "truncated"])
def test_broken_video_is_bad_input(videos: dict[str, Path], tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInput, match="cannot read video"):
        VideoProcessor().process(_job(videos[name], tmp_path), CPU)


@pytest.mark.parametrize("options", [{"keyframes": -1}, {"keyframes": "3"}, {"thumbnails": "yes"}])
def test_bad_frame_options(videos: dict[str, Path], tmp_path: Path, options: dict) -> None:
    with pytest.raises(BadInput):
        VideoProcessor().process(_job(videos["mute"], tmp_path, **options), CPU)


def test_a_stuck_ffmpeg_is_stopped_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from worker.errors import ProcessingTimeout
    from worker.processors import video

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\nexec sleep 30\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    src = tmp_path / "in.mp4"
    src.write_bytes(b"not really a video")
    start = time.monotonic()
    with pytest.raises(ProcessingTimeout, match="--ffmpeg-timeout"):
        video.probe(src, timeout_s=0.5)
    with pytest.raises(ProcessingTimeout, match="extract the audio track"):
        video.extract_audio(src, tmp_path / "a.wav", timeout_s=0.5)
    assert time.monotonic() - start < 5
    job = JobInput("video", {}, tmp_path, path=src)
    with pytest.raises(ProcessingTimeout):
        VideoProcessor().process(job, ProcessorConfig(ffmpeg_timeout_s=0.5))
