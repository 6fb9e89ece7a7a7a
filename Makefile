# bq-pipelines: the two set-up commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test processes (pytest-xdist; 0 = in pytest's own process). A file's tests share one process,
# as its module fixtures (a Dagster webserver, a daemon) expect, unless scheduling.py splits it.
# Five on two cores: the long tests mostly wait on Dagster processes (run monitoring, sensors).
# Busy share of the two cores over a run (/proc/stat every 5 s) and pytest's time: four 85 %
# and 544-555 s, five 95 % and 506 s, six 97 % and 518-580 s (the long tests stretch, and
# their daemons and code servers tick for longer).
TEST_WORKERS ?= 5
XDIST := -n $(TEST_WORKERS) --dist loadfile
# `dg` runs in the project's virtual environment (it warns when another one is active).
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg
export DAGSTER_HOME ?= $(CURDIR)/.bq/dagster
# Batched event writes in every Dagster process make starts (UI, daemon, their runs and steps):
# Dagster reads it from the environment only (bq_pipelines/runtime/event_batching.py).
export DAGSTER_EVENT_BATCH_SIZE ?= 1000
# One OpenBLAS thread: nothing here calls BLAS, and numpy's import started one per core in each
# process (rasterio imports it): ~0.08 s of CPU less per code-location load, in each of the
# tests' ~250 Python processes.
export OPENBLAS_NUM_THREADS ?= 1
# Every Python process started from here begins with startup/sitecustomize.py (a larger youngest
# generation for the collector during the imports: ~12 % less CPU per code-location load); the
# processes Dagster starts (code servers, run workers, step processes) inherit it.
export PYTHONPATH := $(CURDIR)/startup$(if $(PYTHONPATH),:$(PYTHONPATH))
# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (as on CI machines; empty means
# unset): the install does not compile it, and without it each of the tests' ~250 Python
# processes (code servers, run workers, CLI runs) compiled every module it imports from source
# (~1.2 s of CPU each), and each test process re-did pytest's assertion rewriting (~2.5 s).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: install install-dev deploy-tools bench-tools deploy-check demo test test-cpu test-unit pytest services services-down test-stack-down dev ui api browse lint check-defs format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the locked tree: on a fresh machine pip took ~65 s (52 s of CPU, most of it
# compiling every module of every package to bytecode), uv ~7 s. Python writes the bytecode of
# what is imported on first use (see PYTHONDONTWRITEBYTECODE above).
$(BIN)/uv: $(BIN)/python
	$(BIN)/pip install -q -c requirements.lock uv
UV_INSTALL := $(BIN)/uv pip install -q --python $(BIN)/python -c requirements.lock

# Reproducible installs: every package pinned in requirements.lock.
$(VENV)/.installed: $(BIN)/uv pyproject.toml requirements.lock
	$(UV_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(UV_INSTALL) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The tests' bytecode, compiled once on both cores before a first run. Compiled on first import
# instead, each module was compiled by each of the ~10 processes that start together at the
# beginning of a run (test workers, code servers, daemons, servers): a fresh clone's `make test`
# after `make demo` took 500.6 s; with this 458.8 s, plus 5.9 s here. Files edited later are
# compiled on first import, as before.
$(VENV)/.bytecode: $(VENV)/.installed-dev
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python3*/site-packages bq_pipelines \
	  bq_pipelines_testkit bq_pipelines_tests scripts startup
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

## Generate the demo rasters and materialize every demo partition on the embedded defaults
## (or on the services, after `. .bq/services.env`).
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/bq-pipelines demo-data
	$(BIN)/bq-pipelines materialize demo

## `docker-compose` (Debian's 1.29; PyPI's cannot live beside our pins) to validate
## deploy/compose.yaml: no container engine is needed for `config`; Debian's nginx to run the
## stack's nginx configuration (TLS, redirect, HSTS) on loopback in the tests; redis-server for
## the Celery tests' own broker (never the machine's Redis). Idempotent.
deploy-tools:
	@{ command -v docker-compose && { command -v nginx || [ -x /usr/sbin/nginx ]; } && \
	  command -v redis-server; } >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "run: sudo apt-get install -y docker-compose nginx redis-server" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends docker-compose nginx redis-server; }

## GDAL's command-line tools (gdal_translate, gdalwarp): the baselines of bench/bench_cog.py,
## never used by the project itself. Idempotent.
bench-tools:
	@command -v gdal_translate >/dev/null && command -v gdalwarp >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "run: sudo apt-get install -y gdal-bin" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends gdal-bin; }

# The tests' own stack (scripts/services.py --stack test): a database and ports of this
# checkout's tests, never those of `make services`; made by the run and dropped at its end
# (the EXIT trap: also when a test run fails or is interrupted).
TEST_STACK := $(BIN)/python scripts/services.py --stack test

## The deploy/ checks alone: compose file, production instance on PostgreSQL, Celery workers.
deploy-check: install-dev deploy-tools
	trap '$(TEST_STACK) down' EXIT; $(TEST_STACK) up || exit; \
	  $(BIN)/pytest bq_pipelines_tests/deploy $(PYTEST_ARGS)

## Install test dependencies, start the tests' own stack, run the tests, drop the stack. Tests
## marked `serial` (they replace the catalog database every other test writes into) run after the
## others, alone; pytest's exit code 5 is "none selected" (a PYTEST_ARGS without any).
test: install-dev deploy-tools $(VENV)/.bytecode
	trap '$(TEST_STACK) down' EXIT; $(TEST_STACK) up || exit; \
	  status=0; $(BIN)/pytest $(XDIST) -m "not serial" $(PYTEST_ARGS) || status=$$?; \
	  $(BIN)/pytest -m serial $(PYTEST_ARGS) || [ $$? = 5 ] || status=1; \
	  exit $$status

## `make test` under scripts/suite_cpu.py: where its CPU goes, by kind of process and by test file
## (the suite is CPU-bound on two cores); SUITE_CPU_ARGS passes options, e.g. `--json cpu.json`.
test-cpu: install-dev
	$(BIN)/python scripts/suite_cpu.py $(SUITE_CPU_ARGS) -- $(MAKE) test

## The quick pass: the tests that need no service and are not `slow` (nor `serial`); nothing is
## started (the compose and nginx checks need deploy-tools, installed once). `make test` runs
## them too.
test-unit: install-dev deploy-tools
	$(BIN)/pytest $(XDIST) -m "not services and not serial and not slow" $(PYTEST_ARGS)

## pytest as it is; tests needing services start the tests' own stack and leave it running for
## the next run (`make test-stack-down` stops it and drops its database).
pytest: install-dev
	$(BIN)/pytest $(PYTEST_ARGS)

test-stack-down:
	@if [ -x $(BIN)/python ]; then $(TEST_STACK) down; fi

## PostGIS + pgstac + stac-fastapi-pgstac and a moto S3 server on 127.0.0.1; writes .bq/services.env
services: install-dev
	$(BIN)/python scripts/services.py up

services-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/services.py down; fi

# The UI's port (`make dev`, `make ui`); the API links its runs there unless BQ_DAGSTER_UI_URL says.
export BQ_UI_PORT ?= 3000
# `make browse` serves the embedded defaults' catalog and objects there; runs started by these
# targets record http links to it (lib/links.py) instead of file:// ones a browser won't open.
export BQ_BROWSE_PORT ?= 8385
demo dev ui api: export BQ_BROWSE_URL ?= http://127.0.0.1:$(BQ_BROWSE_PORT)

## The static catalog (/catalog/) and local objects (/objects/) over http on
## 127.0.0.1:$$BQ_BROWSE_PORT, so the links in the UI open (README: "Previews")
browse: install
	$(BIN)/python -m bq_pipelines.runtime.browse

## The Dagster UI and daemon on http://127.0.0.1:$$BQ_UI_PORT (`dg dev`; the daily catalog
## backup's schedule off unless BQ_BACKUP_SCHEDULE_ENABLED=true)
dev: install-dev $(DAGSTER_HOME)/dagster.yaml
	$(DG) dev --host 127.0.0.1 --port $(BQ_UI_PORT)

## The Dagster UI alone (no daemon) on $$BQ_UI_PORT: to watch what `make api` processes
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p $(BQ_UI_PORT)

## The ingestion API on 127.0.0.1:$${BQ_API_PORT:-8083} and a dagster-daemon processing its requests
## (README: "Ingestion API"). Without BQ_API_TOKEN, a token is generated once in .bq/api/token.
API_TOKEN_FILE := .bq/api/token
api: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m bq_pipelines.ingestion --with-daemon --workspace workspace.yaml --token-file $(API_TOKEN_FILE)

## ruff (lint + format), mypy (pyproject: strict on every package, tests included) and the dataset files;
## .ci/run runs it before the tests.
lint: install-dev check-defs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The dataset files: the component schema (`dg check yaml`), every file with its refusals and
## lines (dg checks one file per component type on a whole project), and what they build.
check-defs: install-dev
	$(DG) check yaml
	$(BIN)/python -m bq_pipelines.components.check
	$(DG) list defs --assets 'key:"*/collection"'

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Benchmarks (ratios against a baseline measured in the same run): each writes its results
## under bench/results/, then bench/RESULTS.md is assembled from them (bench/assemble.py);
## deploy-tools for nginx, the API benchmark's source host
bench: install-dev bench-tools deploy-tools
	$(BIN)/python bench/bench_cog.py
	$(BIN)/python bench/bench_cog.py --small
	$(BIN)/python bench/bench_cog.py --rss-gb 2.1
	$(BIN)/python bench/bench_items.py
	$(BIN)/python bench/bench_backfill.py
	$(BIN)/python bench/bench_cli.py
	$(BIN)/python bench/bench_validation.py
	$(BIN)/python bench/bench_previews.py
	$(BIN)/python bench/bench_publish.py
	$(BIN)/python bench/bench_api.py --process none --requests 1500 --workers 2
	$(BIN)/python bench/bench_api.py --requests 200
	$(BIN)/python bench/assemble.py

clean: services-down test-stack-down
	rm -rf .bq
