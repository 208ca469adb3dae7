"""Whisper throughput: audio minutes transcribed per wall-clock minute, as a markdown table row.

    python bench/media_bench.py --device cpu --model tiny.en-dir --model base-dir [--seconds 90]
    python bench/media_bench.py --device cuda --model DIR --audio clip.wav --reference clip.txt

Without ``--audio`` it makes a ~90 s espeak-ng clip (the test sentence repeated) and scores the
word error rate against it. The model is loaded once and not timed, as in a worker, which keeps
its models loaded between jobs; one warm-up pass on the first 10 s runs before the timed pass.
It uses faster-whisper directly (not the worker package) so a bare GPU box needs only the wheels.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import media  # noqa: E402  (stdlib-only helpers: clip generation, WER)

HEADER = (
    "| date | machine | device | compute | model | audio (s) | load (s) | transcribe (s) "
    "| audio min / min | WER |\n|---|---|---|---|---|---|---|---|---|---|"
)


def machine() -> str:
    """A short description of this machine (CPU cores, GPU name when CTranslate2 sees one)."""
    import os

    import ctranslate2

    desc = f"{os.cpu_count()}-core {platform.machine()}"
    if ctranslate2.get_cuda_device_count() > 0:
        try:
            import subprocess

            query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
            gpu = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
            desc += f", {gpu}"
        except (OSError, IndexError, subprocess.SubprocessError):
            desc += ", CUDA GPU"
    return desc


def run(model_path: str, device: str, audio: object, reference: str | None, beam_size: int) -> str:
    """Load ``model_path`` on ``device``, transcribe ``audio`` once, and return the table row."""
    from faster_whisper import WhisperModel

    compute = "float16" if device == "cuda" else "int8"
    started = time.perf_counter()
    model = WhisperModel(model_path, device=device, compute_type=compute)
    load_s = time.perf_counter() - started
    warm, _ = model.transcribe(audio[: 16000 * 10], beam_size=beam_size, vad_filter=True)  # type: ignore[index]
    list(warm)
    started = time.perf_counter()
    segments, info = model.transcribe(audio, beam_size=beam_size, vad_filter=True)
    text = " ".join(seg.text for seg in segments)  # the generator does the work: consume it all
    took = time.perf_counter() - started
    wer = f"{media.word_error_rate(reference, text):.1%}" if reference else "-"
    name = Path(model_path).name if Path(model_path).is_dir() else model_path
    return (
        f"| {time.strftime('%Y-%m-%d')} | {machine()} | {device} | {compute} | {name} | {info.duration:.0f} "
        f"| {load_s:.1f} | {took:.1f} | {info.duration / took:.1f} | {wer} |"
    )


def main() -> None:
    """Parse arguments, prepare the clip, print the header and one row per model."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", action="append", required=True, help="model name or local directory")
    parser.add_argument("--audio", type=Path, help="audio file (default: generate an espeak-ng clip)")
    parser.add_argument("--reference", type=Path, help="its transcript, for the WER column")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the generated clip")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--no-header", action="store_true")
    args = parser.parse_args()

    from faster_whisper import decode_audio

    reference = args.reference.read_text() if args.reference else None
    clip = args.audio
    if clip is None:
        clip = media.long_speech_wav(Path(tempfile.mkdtemp()) / "clip.wav", args.seconds)
        repeats = clip.with_suffix(".txt").read_text().count("pause.wav")
        reference = " ".join([media.SENTENCE] * repeats)
    audio = decode_audio(str(clip), sampling_rate=16000)
    if not args.no_header:
        print(HEADER)
    for model in args.model:
        print(run(model, args.device, audio, reference, args.beam_size), flush=True)


if __name__ == "__main__":
    main()
