# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak setup libopus clean docs docs-build

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "rxvoice needs Python >= 3.11 (found $$($(PYTHON) --version)); run 'make PYTHON=python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

libopus:
	@PYTHON="$(PYTHON)" sh scripts/ensure-libopus.sh

setup: $(STAMP) libopus

lint: setup
	$(BIN)/ruff check rxvoice tests benchmarks examples notebooks
	$(BIN)/ruff format --check rxvoice tests benchmarks examples notebooks

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit docs-build

demo: setup
	$(BIN)/python -m rxvoice demo

# make bench BENCH_ARGS=--quick: fewer repeats, a short end-to-end run
bench: setup
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# 25 speakers for 10 minutes, 5 % loss, epoch changes, a resume and a new session
# (docs/reliability.md); e.g. `make soak SOAK_ARGS="--minutes 2"` for a short one.
SOAK_ARGS ?=
soak: setup
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# The docs site (mkdocs.yml, docs/): `make docs` serves it on http://127.0.0.1:8000;
# docs-build checks its docstring extension and builds it into site/ with --strict.
DOCS_ENV := NO_MKDOCS_2_WARNING=1

docs: setup
	$(DOCS_ENV) $(BIN)/mkdocs serve

docs-build: setup
	$(BIN)/ruff check docs/_ext
	$(BIN)/ruff format --check docs/_ext
	$(BIN)/mypy --strict docs/_ext
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis site
