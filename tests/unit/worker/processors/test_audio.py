"""Audio processor: real faster-whisper transcription of espeak-ng speech with packaged weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import media
from worker.errors import BadInput, OutOfMemory
from worker.processors import whisper
from worker.processors.audio import AudioProcessor
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.transcript import Segment, format_timestamp, paragraphs, parse_subtitles

CPU = ProcessorConfig(device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    speech = media.speech_wav(d / "speech.wav")
    return {
        "speech": speech,
        "silent": media.silent_wav(d / "silent.wav"),
        "corrupt": media.corrupt_file(d / "corrupt.mp3"),
        "truncated": media.truncated_m4a(d / "truncated.m4a", speech),
        "header_only": _write(d / "header.wav", speech.read_bytes()[:44]),
        "text": _write(d / "notes.wav", b"this is not audio at all\n" * 50),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _job(path: Path, tmp_path: Path, **options: Any) -> JobInput:
    return JobInput(content_type="audio", options={"model": str(media.tiny_en_model()), **options},
                    temp_dir=tmp_path, path=path)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_result(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ProcessResult, list]:
    progress: list[tuple[float, str]] = []
    job = _job(files["speech"], tmp_path_factory.mktemp("job"), word_timestamps=True)
    job.progress = lambda fraction, message: progress.append((fraction, message))
    return AudioProcessor().process(job, CPU), progress


def _heard(result: ProcessResult) -> str:
    return " ".join(seg["text"] for seg in result.metadata["segments"])


@pytest.mark.slow  # a real Whisper model
def test_tiny_en_transcribes_known_sentence(tiny_result: tuple[ProcessResult, list]) -> None:
    result, progress = tiny_result
    wer = media.word_error_rate(media.SENTENCE, _heard(result))
    assert wer < 0.4, (wer, _heard(result))
    meta = result.metadata
    assert meta["language"] == "en" and meta["device"] == "cpu" and meta["compute_type"] == "int8"
    assert meta["diarization"] is False
    assert 10 < meta["duration"] < 15 and meta["word_count"] > 20
    assert all(seg["words"] and seg["end"] > seg["start"] for seg in meta["segments"])
    assert result.markdown.startswith("# Transcript: speech.wav")
    assert "- **Model:**" in result.markdown and "[00:00] " in result.markdown
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("transcribed 00:") for _, m in progress)


@pytest.mark.slow
def test_base_multilingual_transcribes_better(files: dict[str, Path], tmp_path: Path) -> None:
    job = _job(files["speech"], tmp_path, model=str(media.base_model()), beam_size=2)
    result = AudioProcessor().process(job, CPU)
    wer = media.word_error_rate(media.SENTENCE, _heard(result))
    assert wer < 0.25, (wer, _heard(result))
    assert result.metadata["model"] == "whisper-base" and result.metadata["language"] == "en"


@pytest.mark.parametrize("name", ["corrupt", "truncated", "header_only", "text"])
def test_broken_input_is_bad_input(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInput, match=r"cannot decode|contains no audio"):
        AudioProcessor().process(_job(files[name], tmp_path), CPU)


@pytest.mark.parametrize("vad", [True, False])
def test_silence_is_bad_input_not_empty_success(files: dict[str, Path], tmp_path: Path, vad: bool) -> None:
    with pytest.raises(BadInput, match="no speech detected"):
        AudioProcessor().process(_job(files["silent"], tmp_path, vad_filter=vad, language="en"), CPU)


@pytest.mark.parametrize(
    "options", [{"beam_size": "five"}, {"beam_size": 0}, {"vad_filter": "yes"}, {"model": "no-such-model"}]
)
def test_bad_options_are_bad_input(files: dict[str, Path], tmp_path: Path, options: dict) -> None:
    with pytest.raises(BadInput):
        AudioProcessor().process(_job(files["speech"], tmp_path, **options), CPU)


def test_out_of_memory_maps_to_out_of_memory(files: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    class Exploding:
        def transcribe(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("CUDA failed with error out of memory")

    fake = whisper.LoadedModel(model=Exploding(), name="large-v3", device="cuda", compute_type="float16")
    monkeypatch.setattr("worker.processors.audio.load_model", lambda name, device: fake)
    with pytest.raises(OutOfMemory):
        AudioProcessor().process(_job(files["speech"], tmp_path), CPU)


def test_models_are_loaded_once_per_process() -> None:
    first = whisper.load_model(str(media.tiny_en_model()), "cpu")
    assert whisper.load_model(str(media.tiny_en_model()), "auto") is first  # no GPU here: same entry


def test_device_choice(monkeypatch) -> None:
    monkeypatch.setattr(whisper, "cuda_device_count", lambda: 1)
    assert whisper.pick_device("auto") == ("cuda", "float16")
    assert whisper.pick_device("cpu") == ("cpu", "int8")
    monkeypatch.setattr(whisper, "cuda_device_count", lambda: 0)
    assert whisper.pick_device("auto") == ("cpu", "int8")
    with pytest.raises(Exception, match="no CUDA device"):
        whisper.pick_device("cuda")


def test_timestamps_and_paragraphs() -> None:
    assert format_timestamp(65.4) == "01:05"
    assert format_timestamp(3725) == "01:02:05"
    segs = [Segment(0, 2, "One."), Segment(2.5, 4, "Two."), Segment(9, 10, "Three.")]
    assert paragraphs(segs, gap_s=2.0) == [(0, "One. Two."), (9, "Three.")]


def test_subtitle_parsing_vtt_and_srt() -> None:
    vtt = "WEBVTT\n\n00:01.000 --> 00:02.500 align:start\n<c>Hello</c> &amp; welcome\n\n" \
          "01:00:00.000 --> 01:00:01.000\nLate line\n"  # fmt: skip
    srt = "1\n00:00:01,000 --> 00:00:02,000\nFirst\n\n2\n00:00:02,000 --> 00:00:03,000\nFirst\n"
    assert parse_subtitles(vtt) == [
        Segment(1.0, 2.5, "Hello & welcome"),
        Segment(3600.0, 3601.0, "Late line"),
    ]
    assert parse_subtitles(srt) == [Segment(1.0, 2.0, "First")]


def test_progress_never_says_more_transcribed_than_the_audio_holds() -> None:
    from worker.processors.audio import transcription_progress

    fraction, message = transcription_progress(2.02, 1.5, 0.0, 1.0)  # Whisper's frames overshoot
    assert message == "transcribed 00:01 of 00:01" and fraction == 1.0
    fraction, message = transcription_progress(30.0, 60.0, 0.2, 1.0)
    assert message == "transcribed 00:30 of 01:00" and fraction == pytest.approx(0.6)
