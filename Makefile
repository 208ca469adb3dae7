# morag-remote: `make demo` runs the whole pipeline on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= server,worker,media,documents,offline-models,test
APT_PACKAGES := ffmpeg tesseract-ocr espeak-ng libmagic1

.PHONY: help venv install check-system test test-fast demo lint openapi configuration-doc bench clean

help:
	@echo "make demo   - start a server, a worker and run a real ingest end to end"
	@echo "make test   - run the test suite (needs PostgreSQL on 127.0.0.1:5432, see README)"
	@echo "make lint   - ruff + mypy"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch 2.13.0 is pinned in the documents extra (a plain docling install pulls a 3 GB CUDA torch);
# PyPI's torchvision does not import beside it and docling's formats do not need it: remove it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	-$(BIN)/pip uninstall --quiet --yes torchvision
	touch $@

venv install: $(VENV)/.installed

check-system:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v ffprobe >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	ldconfig -p 2>/dev/null | grep -q libmagic.so || missing="$$missing libmagic1"; \
	if [ -n "$$missing" ]; then \
		echo "Missing system packages:$$missing"; \
		echo "Install them with:  sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; \
		echo "(macOS: brew install ffmpeg tesseract espeak-ng libmagic)"; \
		exit 1; \
	fi

test: install check-system lint
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -x

demo: install check-system
	$(BIN)/python scripts/demo.py

lint: install
	$(BIN)/ruff check api worker protocol tests bench alembic
	$(BIN)/mypy

openapi: install
	$(BIN)/python -m api.openapi > openapi.json

configuration-doc: install
	$(BIN)/python -m api.settings_doc > docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
