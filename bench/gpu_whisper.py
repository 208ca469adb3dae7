"""Whisper through the worker's real audio processor on CUDA and on CPU, same box, same clip.

    python bench/gpu_whisper.py MODEL_DIR CLIP.wav [--devices cuda,cpu] [--runs 2]

Prints one JSON line per device: audio seconds, wall seconds per run, audio minutes processed
per minute, model load time, word count. Used for docs/benchmarks.md (GPU vs CPU ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.processors.audio import AudioProcessor  # noqa: E402
from worker.processors.base import JobInput, ProcessorConfig  # noqa: E402
from worker.processors.whisper import clear_cache, load_model  # noqa: E402


def main() -> None:
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
        print(json.dumps({
            "device": loaded.device, "compute_type": loaded.compute_type, "model": loaded.name,
            "audio_s": round(audio_s, 1), "load_s": round(load_s, 2), "warmup_s": round(walls[0], 2),
            "runs_s": [round(w, 2) for w in walls[1:]], "audio_min_per_min": round(audio_s / best, 1),
            "words": result.metadata["word_count"], "cpu_count": os.cpu_count(),
        }), flush=True)


if __name__ == "__main__":
    main()
