# One front door. Each target prepares .venv (Python 3.11) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: dev test soak lint format migrate bench package clean

$(READY): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip<26.3'  # chalice 1.34 requires pip<26.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(READY)

## dev: run the whole API locally (REST :8000, WebSocket :8001); Ctrl-C stops everything
dev: $(READY)
	$(BIN)/python -m local.server

## test: the full suite against real PostgreSQL and Redis (embedded unless DATABASE_URL/REDIS_URL)
test: $(READY)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## soak: minutes of load through the local server (200 connections, 50 conversations, random reconnects);
## prints the figures (lost, duplicated, latency, server memory). SOAK_SECONDS etc. override the size.
soak: $(READY)
	SOAK_SECONDS=$${SOAK_SECONDS:-300} SOAK_CONNECTIONS=$${SOAK_CONNECTIONS:-200} \
	SOAK_CONVERSATIONS=$${SOAK_CONVERSATIONS:-50} SOAK_SESSION=$${SOAK_SESSION:-30} \
	SOAK_SEND_INTERVAL=$${SOAK_SEND_INTERVAL:-10} \
	$(BIN)/python -m pytest tests/test_soak.py -p no:warnings -q

## lint: ruff and mypy --strict
lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check chalicelib local tools app.py
	$(BIN)/mypy --strict chalicelib local tools app.py

format: $(READY)
	$(BIN)/ruff format chalicelib local tools app.py
	$(BIN)/ruff check --fix .

## bench: seed (or reuse) a 1M-message dataset and measure every hot path beside the naive design
##        -> bench/results.json, bench/chart.png, and a table (BENCH_ARGS="--quick" for a smoke run)
bench: $(READY) $(VENV)/.bench-ready
	$(BIN)/python -m bench $(BENCH_ARGS)

$(VENV)/.bench-ready: bench/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

## migrate: apply sql/ migrations to DATABASE_URL (or DB_*), else to make dev's embedded database;
##          prints which database first
migrate: $(READY)
	$(BIN)/python -m local.migrate

## package: the CloudFormation/SAM template, as `chalice deploy` would build it, into build/, with the
##          deployment zip's modules precompiled (Lambda cannot cache bytecode; see tools/precompile_package.py)
package: $(READY)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage $${STAGE:-dev} \
		--merge-template .chalice/merge-template.json build/
	$(BIN)/python tools/precompile_package.py build/
	$(BIN)/cfn-lint build/sam.json

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
