# A GPU worker: CUDA 12 runtime + cuDNN for faster-whisper (CTranslate2), ffmpeg, tesseract.
# Build from the repository root and run with the NVIDIA container toolkit:
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t morag-worker-cuda .
#   docker run --gpus all -e MORAG_WORKER_API_KEY=... -e MORAG_WORKER_SERVER=https://morag.example.org morag-worker-cuda
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# Ubuntu's security updates matter more than pinned apt versions here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv ffmpeg tesseract-ocr espeak-ng libmagic1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home morag \
 && python3 -m venv /opt/morag
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY api ./api
COPY protocol ./protocol
COPY worker ./worker
# The documents extra pins a CPU torch (docling's layout models are not used offline); Whisper
# runs on the GPU through CTranslate2, which needs no torch.
RUN /opt/morag/bin/pip install --no-cache-dir -c requirements.lock '.[worker,media,documents]' \
 && /opt/morag/bin/pip uninstall -y torchvision || true
USER 10001
ENV MORAG_WORKER_DEVICE=cuda MORAG_WORKER_LANES=gpu,cpu MORAG_WORKER_TEMP_DIR=/home/morag/work
CMD ["/opt/morag/bin/python", "-m", "worker"]
