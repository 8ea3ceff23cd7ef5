# Each target wraps one command a newcomer could type. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup run test test-unit test-integration test-cluster lint typecheck proto crds bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## Create .venv and install Mainsail with its dev tools (idempotent)
	@scripts/bootstrap.sh

run: setup ## Run the main job: `mainsail up` on the embedded tiny deployment
	@$(VENV)/bin/mainsail up

test: setup ## Lint, type-check and run every test tier (what CI runs)
	@scripts/test.sh

test-unit: setup ## Unit tests only (fast)
	@$(PY) -m pytest tests/unit -q

test-integration: setup ## Integration and end-to-end tests only
	@$(PY) -m pytest tests/integration tests/e2e -q

test-cluster: setup ## Cluster tier only: real pods on a one-node Kubernetes (needs root)
	@scripts/node-deps.sh && $(PY) -m pytest tests/cluster -q

lint: setup ## ruff + import-linter contracts
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

typecheck: setup ## mypy --strict over every component, the tests and the benchmarks
	@$(VENV)/bin/mypy proto/mainsail workers/mainsail router/mainsail operator/mainsail cli/mainsail sim/mainsail tests bench

proto: setup ## Regenerate the gRPC stubs from proto/mainsail/proto/v1/mainsail.proto
	@scripts/gen_proto.sh

crds: setup ## Regenerate deploy/crds and charts/mainsail/crds from the typed spec
	@$(VENV)/bin/mainsail crd --write deploy/crds --write charts/mainsail/crds

bench: setup ## Run the quick benchmarks and print their tables
	@$(PY) bench/router_overhead.py

clean: ## Remove the venv and caches made by the build (not ~/.cache/mainsail)
	rm -rf $(VENV) .stamps .mypy_cache .ruff_cache
