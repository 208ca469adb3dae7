"""The ``audio`` processor: faster-whisper transcription to timestamped markdown.

``transcribe_file`` is the shared step the video and media-URL processors reuse.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import BadInput, OutOfMemory
from worker.processors import transcript
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.transcript import Segment
from worker.processors.whisper import LoadedModel, is_out_of_memory, load_model

SAMPLE_RATE = 16000
# With VAD off Whisper hallucinates short phrases ("You") on silence with a high no-speech
# probability that its own log-prob filter lets through; a real speech segment is far below this.
NO_SPEECH_DROP = 0.9


@dataclass
class WhisperOptions:
    model: str
    language: str | None = None
    beam_size: int = 5
    vad_filter: bool = True
    word_timestamps: bool = False
    paragraph_gap_s: float = transcript.DEFAULT_PARAGRAPH_GAP_S


def _opt(options: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = options.get(key, default)
    if value is None:
        return default
    if kind is bool and not isinstance(value, bool):
        raise BadInput(f"option {key!r} must be true or false, not {value!r}")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise BadInput(f"option {key!r} must be a number, not {value!r}")
    return kind(value)


def parse_options(options: dict[str, Any], config: ProcessorConfig) -> WhisperOptions:
    """Whisper options from a job's options (model, language, beam_size, vad_filter, ...)."""
    language = options.get("language")
    if language is not None and not isinstance(language, str):
        raise BadInput(f"option 'language' must be a language code, not {language!r}")
    if language in ("", "auto", "detect"):
        language = None
    opts = WhisperOptions(
        model=str(options.get("model") or config.whisper_model),
        language=language,
        beam_size=_opt(options, "beam_size", int, 5),
        vad_filter=_opt(options, "vad_filter", bool, True),
        word_timestamps=_opt(options, "word_timestamps", bool, False),
        paragraph_gap_s=_opt(options, "paragraph_gap", float, transcript.DEFAULT_PARAGRAPH_GAP_S),
    )
    if not 1 <= opts.beam_size <= 20:
        raise BadInput(f"option 'beam_size' must be between 1 and 20, not {opts.beam_size}")
    return opts


@dataclass
class Transcription:
    """What Whisper heard, with everything the metadata and markdown need."""

    segments: list[Segment]
    duration: float
    language: str
    language_probability: float
    model: LoadedModel
    options: WhisperOptions
    words: list[list[dict[str, Any]]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """The metadata JSON: segments for time-based chunking plus how they were made."""
        segs = [s.as_dict() for s in self.segments]
        if self.options.word_timestamps:
            for seg, words in zip(segs, self.words, strict=True):
                seg["words"] = words
        return {
            "duration": round(self.duration, 3),
            "language": self.language,
            "language_probability": round(self.language_probability, 4),
            "model": self.model.name,
            "device": self.model.device,
            "compute_type": self.model.compute_type,
            "word_count": transcript.word_count(self.segments),
            "diarization": False,  # no diarization model on workers yet: never invent speakers
            "segments": segs,
        }

    def meta_lines(self) -> list[tuple[str, str]]:
        """The human-readable metadata list of the markdown."""
        return [
            ("Duration", transcript.format_timestamp(self.duration)),
            ("Language", f"{self.language} (probability {self.language_probability:.2f})"),
            ("Model", self.model.name),
            ("Device", f"{self.model.device} ({self.model.compute_type})"),
            ("Words", str(transcript.word_count(self.segments))),
        ]


def decode(path: Path) -> Any:
    """The audio of any file ffmpeg/PyAV reads, as 16 kHz mono float32; BadInput when unreadable."""
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except MemoryError as exc:
        raise OutOfMemory(f"out of memory decoding {path.name}") from exc
    except Exception as exc:  # PyAV raises InvalidDataError, IndexError (no audio stream), ...
        raise BadInput(
            f"cannot decode audio from {path.name}: corrupt, truncated or not audio ({exc})"
        ) from exc
    if len(audio) < SAMPLE_RATE // 10:
        raise BadInput(f"{path.name} contains no audio (empty or truncated)")
    return audio


def transcription_progress(end: float, duration: float, low: float, high: float) -> tuple[float, str]:
    """(fraction, message) after a segment ending at ``end``; Whisper's last segment may end past
    the audio's duration (it rounds to its 20 ms frames), which must not read "00:02 of 00:01"."""
    done = min(max(end, 0.0), duration)
    fraction = low + (high - low) * (done / duration if duration > 0 else 1.0)
    return (
        fraction,
        f"transcribed {transcript.format_timestamp(done)} of {transcript.format_timestamp(duration)}",
    )


def transcribe_file(
    path: Path, job: JobInput, config: ProcessorConfig, span: tuple[float, float] = (0.0, 1.0)
) -> Transcription:
    """Transcribe one file, reporting progress within ``span``; BadInput when no speech is heard."""
    opts = parse_options(job.options, config)
    audio = decode(path)
    loaded = load_model(opts.model, config.device)
    low, high = span
    job.progress(low, f"transcribing with {loaded.name} on {loaded.device}")
    segments: list[Segment] = []
    words: list[list[dict[str, Any]]] = []
    try:
        seg_iter, info = loaded.model.transcribe(
            audio,
            language=opts.language,
            beam_size=opts.beam_size,
            vad_filter=opts.vad_filter,
            word_timestamps=opts.word_timestamps,
        )
        duration = float(info.duration) or 1.0
        for seg in seg_iter:  # a generator: decoding happens as we iterate, so progress is live
            if not opts.vad_filter and float(seg.no_speech_prob) >= NO_SPEECH_DROP:
                continue
            segments.append(Segment(float(seg.start), float(seg.end), seg.text.strip()))
            words.append(
                [
                    {
                        "start": float(w.start),
                        "end": float(w.end),
                        "word": w.word.strip(),
                        "probability": round(float(w.probability), 3),
                    }
                    for w in seg.words or []
                ]
            )
            job.progress(*transcription_progress(float(seg.end), duration, low, high))
    except Exception as exc:
        if is_out_of_memory(exc):
            raise OutOfMemory(f"out of memory transcribing on {loaded.device}: {exc}") from exc
        raise
    if not any(seg.text for seg in segments):
        raise BadInput("no speech detected in the audio")
    return Transcription(
        segments=segments,
        duration=float(info.duration),
        language=str(info.language),
        language_probability=float(info.language_probability),
        model=loaded,
        options=opts,
        words=words,
    )


def media_available() -> tuple[bool, str]:
    """(True, "") when faster-whisper is installed, else how to install it."""
    if importlib.util.find_spec("faster_whisper") is None:
        return False, "faster-whisper is not installed: pip install '.[worker,media]'"
    return True, ""


class AudioProcessor:
    """Audio file -> timestamped transcript markdown + segments metadata."""

    content_types = ("audio",)

    def available(self) -> tuple[bool, str]:
        return media_available()

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        if job.path is None:
            raise BadInput("an audio job needs an uploaded file")
        job.progress(0.0, "decoding audio")
        result = transcribe_file(job.path, job, config)
        name = job.file_name or job.path.name
        markdown = transcript.render(
            f"Transcript: {name}", result.meta_lines(), result.segments, result.options.paragraph_gap_s
        )
        job.progress(1.0, "done")
        return ProcessResult(markdown=markdown, metadata={"source": name, **result.metadata()})
