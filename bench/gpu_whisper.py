"""Whisper through the worker's real audio processor on CUDA and on CPU, same box, same clip.

    python bench/gpu_whisper.py --make-clip CLIP.wav          # here: espeak-ng reads PASSAGE
    python bench/gpu_whisper.py MODEL_DIR CLIP.wav [--devices cuda,cpu] [--runs 2]

Prints one JSON line per device: audio seconds, wall seconds per run, audio minutes processed
per minute, model load time, word error rate against PASSAGE. Used for docs/benchmarks.md.
A passage of varied sentences, not one sentence repeated: Whisper skips repeated text, which
would make the word error rate measure the clip instead of the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.media import word_error_rate
from worker.processors.audio import AudioProcessor
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.whisper import clear_cache, load_model

PASSAGE = (
    "The harbour was quiet when the first ferry arrived from the island. "
    "Seven fishermen unloaded crates of sardines while gulls circled above the pier. "
    "A teacher walked her class along the promenade and pointed at the old lighthouse. "
    "She explained that the lamp was once fuelled by whale oil and later by electricity. "
    "In the market square a baker sold warm bread, honey cakes and small almond biscuits. "
    "Tourists photographed the fountain, which was built in the year eighteen ninety. "
    "By noon the wind had turned, and dark clouds gathered over the western hills. "
    "The harbour master raised a red flag to warn the sailing boats to return. "
    "Children ran home through narrow streets that smelled of salt and coffee. "
    "In the evening the rain stopped, and the town gathered for music on the square. "
    "An old violinist played a slow melody that everyone seemed to remember. "
    "Later the streets emptied, the lamps were lit, and the sea became calm again. "
    "Remote workers transcribe recordings like this one on their own computers. "
    "The server only receives the text, splits it into chunks, and stores their embeddings. "
    "A good benchmark reports the machine, the model, the date and the numbers."
)


def make_clip(path: Path) -> None:
    """PASSAGE read by espeak-ng, as 16 kHz mono WAV (about 80 s)."""
    import subprocess

    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), PASSAGE], check=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(raw), "-ac", "1", "-ar", "16000", str(path)],
        check=True,
    )
    raw.unlink()


def main() -> None:
    if sys.argv[1:2] == ["--make-clip"]:
        make_clip(Path(sys.argv[2]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("clip", type=Path)
    p.add_argument("--devices", default="cuda,cpu")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-whisper"
    tmp.mkdir(parents=True, exist_ok=True)
    for device in args.devices.split(","):
        clear_cache()
        t0 = time.perf_counter()
        loaded = load_model(args.model, device)
        load_s = time.perf_counter() - t0
        config = ProcessorConfig(device=device, whisper_model=args.model)
        walls, result = [], None
        for _ in range(args.runs + 1):  # the first run warms up kernels and caches
            job = JobInput(content_type="audio", options={}, temp_dir=tmp, path=args.clip)
            t0 = time.perf_counter()
            result = AudioProcessor().process(job, config)
            walls.append(time.perf_counter() - t0)
        assert result is not None
        audio_s = float(result.metadata["duration"])
        best = min(walls[1:])
        print(
            json.dumps(
                {
                    "device": loaded.device,
                    "compute_type": loaded.compute_type,
                    "model": loaded.name,
                    "audio_s": round(audio_s, 1),
                    "load_s": round(load_s, 2),
                    "warmup_s": round(walls[0], 2),
                    "runs_s": [round(w, 2) for w in walls[1:]],
                    "audio_min_per_min": round(audio_s / best, 1),
                    "words": result.metadata["word_count"],
                    "cpu_count": os.cpu_count(),
                    "wer": round(
                        word_error_rate(PASSAGE, " ".join(x["text"] for x in result.metadata["segments"])), 3
                    ),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
