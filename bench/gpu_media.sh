#!/usr/bin/env bash
# Whisper throughput on the GPU and on the CPU of the same machine, offline, as markdown rows for
# docs/benchmarks.md ("Media (Whisper)"). Needs a kit made by bench/prepare_gpu_wheels.sh.
#
# Usage (from the repo root on the GPU box): bench/gpu_media.sh
#   KIT=bench/gpu-kit   the kit directory (wheels/, models/, clip.wav, clip.txt)
#   VENV=/path/venv     use a venv that already has faster-whisper instead of building one
#   PYTHON=python3      interpreter used to build the venv
#   SKIP_CPU=1          only the GPU rows (the CPU rows give the ratio on the same box)
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-bench/gpu-kit}
if [ -n "${VENV:-}" ]; then
  PY="$VENV/bin/python"
else
  VENV=/tmp/morag-gpu-venv
  "${PYTHON:-python3}" -m venv "$VENV"
  PY="$VENV/bin/python"
  EXTRA=()
  if ls "$KIT"/wheels/nvidia_cublas* >/dev/null 2>&1; then EXTRA=(nvidia-cublas-cu12 nvidia-cudnn-cu12); fi
  "$PY" -m pip install -q --no-index --find-links "$KIT/wheels" faster-whisper "${EXTRA[@]}"
fi
# CTranslate2 loads libcublas.so.12 and libcudnn*.so.9 at run time: use pip's nvidia-* copies if any.
LIBS=$("$PY" -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/*/lib/lib*.so*')})))")
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import ctranslate2; n = ctranslate2.get_cuda_device_count(); print('CTranslate2 CUDA devices:', n); raise SystemExit(0 if n or '${ALLOW_NO_GPU:-}' else 1)"

MODELS=()
for m in "$KIT"/models/*; do MODELS+=(--model "$m"); done
ARGS=("${MODELS[@]}" --audio "$KIT/clip.wav" --reference "$KIT/clip.txt")
if [ -z "${ALLOW_NO_GPU:-}" ]; then "$PY" bench/media_bench.py --device cuda "${ARGS[@]}"; fi
if [ -z "${SKIP_CPU:-}" ]; then "$PY" bench/media_bench.py --device cpu --no-header "${ARGS[@]}"; fi
