# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench setup libopus clean

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
	$(BIN)/ruff check rxvoice tests benchmarks
	$(BIN)/ruff format --check rxvoice tests benchmarks

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

demo: setup
	$(BIN)/python -m rxvoice demo

# make bench BENCH_ARGS=--quick: fewer repeats, a short end-to-end run
bench: setup
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
