# The server: no torch, no CUDA (~410 MB venv). Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t morag-server .
FROM python:3.11-slim-bookworm
# Debian's security updates matter more than pinned apt versions here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/morag --create-home morag
WORKDIR /src
COPY pyproject.toml requirements.lock README.md alembic.ini ./
COPY alembic ./alembic
COPY api ./api
COPY protocol ./protocol
COPY worker ./worker
RUN pip install --no-cache-dir -c requirements.lock '.[server]'
USER 10001
ENV MORAG_DATA_DIR=/var/lib/morag PROMETHEUS_MULTIPROC_DIR=/tmp/morag-metrics
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "api", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
