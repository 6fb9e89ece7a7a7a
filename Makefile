# bq-pipelines: the two set-up commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.bq/dagster
# Offline STAC validation: the published extension schemas, when this checkout sits beside them.
SHARED_SCHEMAS := $(abspath $(CURDIR)/../shared/stac-schemas)
ifneq ($(wildcard $(SHARED_SCHEMAS)),)
export BQ_STAC_SCHEMAS_DIR ?= $(SHARED_SCHEMAS)
endif

.PHONY: install install-dev demo test pytest services services-down dev ui api lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reproducible installs: every package pinned in requirements.lock.
$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install -q -c requirements.lock -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

## Generate the demo rasters and materialize every demo partition on the embedded defaults
## (or on the services, after `. .bq/services.env`).
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/bq-pipelines demo-data
	$(BIN)/bq-pipelines materialize demo

## Install test dependencies, start the services, run the tests, stop the services.
test: install-dev
	$(BIN)/python scripts/services.py up
	status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	  $(BIN)/python scripts/services.py down; exit $$status

pytest: install-dev
	$(BIN)/pytest $(PYTEST_ARGS)

## PostGIS + pgstac + stac-fastapi-pgstac and a moto S3 server on 127.0.0.1; writes .bq/services.env
services: install-dev
	$(BIN)/python scripts/services.py up

services-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/services.py down; fi

## The Dagster UI on http://127.0.0.1:3000
dev: install-dev $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## The Dagster UI alone (no daemon): to watch what `make api` processes
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p 3000

## The ingestion API on 127.0.0.1:$${BQ_API_PORT:-8083} and a dagster-daemon processing its requests
## (README: "Ingestion API"). Without BQ_API_TOKEN, a token is generated once in .bq/api/token.
API_TOKEN_FILE := .bq/api/token
api: install $(DAGSTER_HOME)/dagster.yaml
	@if [ -z "$$BQ_API_TOKEN" ] && [ ! -s $(API_TOKEN_FILE) ]; then \
	  mkdir -p $(dir $(API_TOKEN_FILE)); \
	  (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > $(API_TOKEN_FILE)); \
	fi
	@if [ -z "$$BQ_API_TOKEN" ]; then echo "BQ_API_TOKEN is not set: using the token in $(API_TOKEN_FILE)"; fi
	@BQ_API_TOKEN="$${BQ_API_TOKEN:-$$(cat $(API_TOKEN_FILE))}" \
	  $(BIN)/python -m bq_pipelines.api --with-daemon --workspace workspace.yaml

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Benchmarks (ratios against a baseline measured in the same run); see bench/RESULTS.md
bench: install-dev
	$(BIN)/python bench/bench_cog.py
	$(BIN)/python bench/bench_backfill.py
	$(BIN)/python bench/bench_api.py

clean: services-down
	rm -rf .bq
