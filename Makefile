# farthing: set-up, tests, lint, benchmarks. Every target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install sysdeps test test-heavy lint demo bench bench-quick clean

help:
	@echo "make demo        run the main job (farthing demo) on SQLite"
	@echo "make test        install everything and run the test suite"
	@echo "make test-heavy  crash, soak and other slow tests"
	@echo "make lint        ruff + mypy strict"
	@echo "make bench       benchmarks -> docs/benchmarks.md"
	@echo "make bench-quick SQLite, one worker, < 2 min; prints, writes no docs"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: SoftHSM2 (the HLL smart card), PostgreSQL (contract tests),
# chromium (browser tests, through Playwright), prometheus (promtool checks the alert rules),
# wrk (bench).
sysdeps:
	@bash scripts/sysdeps.sh

test: $(STAMP) sysdeps
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-heavy: $(STAMP) sysdeps
	$(PY) -m pytest -q -m heavy

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

demo: $(STAMP)   # SQLite and loopback only: no root, no Debian packages (SoftHSM2 if present)
	$(VENV)/bin/farthing demo

bench: $(STAMP) sysdeps
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench

bench-quick: $(STAMP) sysdeps
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
