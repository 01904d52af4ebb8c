# Every command developers and CI run. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BIN       := $(VENV)/bin
MODELS    ?= models
HOST      ?= 127.0.0.1
PORT      ?= 50051
HTTP_PORT ?= 8000

# The variables the help texts name ($(VENV), ...), shown there with their values.
open_paren := $$(
close_paren := )
HELP_VARIABLES = $(sort $(subst $(close_paren),,$(subst $(open_paren),,\
  $(shell grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | grep -oE '\$$\([A-Z_]+\)'))))

STAMP := $(VENV)/.installed
# tritonclient needs protobuf<7, rnnserve protobuf 7: it gets a virtual environment of its own.
TRITON_VENV ?= .venv-tritonclient
TRITON_STAMP := $(TRITON_VENV)/.installed
STUBS := client/src/rnnserve/v1
SERVER_STUBS := server/src/rnnserve_server/kserve/pb

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) \
	  | sed $(foreach v,$(HELP_VARIABLES),-e 's|$$($(v))|$($(v))|g') \
	  | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): client/pyproject.toml server/pyproject.toml training/pyproject.toml requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, spelled exactly, so pip takes the CPU wheel from local disk.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e client -e 'server[otel]' -e training -r requirements-dev.txt
	touch $@

.PHONY: dev
dev: $(STAMP) ## Install everything for development into $(VENV) (editable)

$(TRITON_STAMP): requirements-tritonclient.txt
	test -x $(TRITON_VENV)/bin/python || python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -r requirements-tritonclient.txt
	touch $@

.PHONY: tritonclient
tritonclient: $(TRITON_STAMP) ## tritonclient[grpc] from PyPI into $(TRITON_VENV) (protobuf<7): the KServe tests drive it

.PHONY: proto
proto: $(STAMP) ## Regenerate the Python stubs from proto/ (client: rnnserve.v1; server: KServe v2)
	bash scripts/gen-proto.sh $(PY) $(STUBS) $(SERVER_STUBS)

.PHONY: check-proto
check-proto: $(STAMP) ## Fail if the committed stubs differ from what proto/ generates
	tmp=$$(mktemp -d) && bash scripts/gen-proto.sh $(PY) $$tmp/client $$tmp/server \
	  && diff -r -x __pycache__ -x __init__.py $$tmp/client $(STUBS) \
	  && diff -r -x __pycache__ -x __init__.py $$tmp/server $(SERVER_STUBS) && rm -rf $$tmp \
	  && echo "stubs are current"

.PHONY: lint
lint: $(STAMP) ## ruff (lint + format check), strict mypy, the import contracts (no cycles)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

.PHONY: format
format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: lint-docker
lint-docker: $(STAMP) ## Validate the Dockerfiles (hadolint) and docker-compose.yml statically
	bash scripts/lint-docker.sh $(BIN)

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests run (redis-server, nginx, curl, prometheus) if missing
	bash scripts/system-deps.sh

.PHONY: test
test: $(STAMP) $(TRITON_STAMP) system-deps ## Run the whole test suite (the Docker end-to-end test: make test-docker)
	RNNSERVE_TRITONCLIENT_PYTHON=$(abspath $(TRITON_VENV))/bin/python $(BIN)/pytest

.PHONY: test-docker
test-docker: $(STAMP) ## Build the images and run the compose stack end to end (needs root or a Docker engine)
	$(BIN)/pytest -m docker -rP tests/docker

.PHONY: bench
bench: $(STAMP) ## Benchmark rnnserve vs echo, baseline and raw onnxruntime (~8 min; ~2 more the first time); rewrites docs/benchmarks.md
	$(PY) -m bench

.PHONY: models
models: $(STAMP) ## Train every demo-zoo model the repository lacks, quick budget (docs/models.md; ~6 min on 2 idle cores)
	$(BIN)/rnnserve-train zoo --out=$(MODELS)

.PHONY: models-full
models-full: $(STAMP) ## Add a full-budget version of every zoo model (about 80 minutes on 2 cores; docs/models.md)
	$(BIN)/rnnserve-train zoo --budget=full --out=$(MODELS)

.PHONY: run
run: $(STAMP) ## Serve $(MODELS) at once (gRPC: rnnserve.v1, KServe v2 on $(HOST):$(PORT); OpenAI HTTP on $(HTTP_PORT)), training the missing zoo models into it
	bash scripts/run.sh $(BIN) $(MODELS) $(HOST) $(PORT) $(HTTP_PORT)

.PHONY: clean
clean: ## Remove caches (keeps $(VENV) and $(MODELS))
	rm -rf .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
