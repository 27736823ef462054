# timelined — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.toml
ROUNDS ?= 50
PG_SECONDS ?= 60
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
# The blocking client, generated from the async one (never committed: tools/async_to_sync.py).
GEN        := timelined/client_sync.py

.PHONY: run test lint typecheck pytest bench bench-quick stress clean venv generate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml hatch_build.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml hatch_build.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@ $(STAMP_RUN)

venv: $(STAMP_TEST) $(GEN)

$(GEN): timelined/client.py tools/async_to_sync.py | $(BIN)/python
	$(BIN)/python tools/async_to_sync.py

## make run: start the daemon in the foreground on $(CONFIG) (state in ./var)
run: $(STAMP_RUN) $(GEN)
	$(BIN)/timelined serve --config $(CONFIG)

## make test: lint, type-check and the whole test suite
test: $(STAMP_TEST) lint typecheck pytest

lint: $(STAMP_TEST) $(GEN)
	$(BIN)/ruff check timelined tests tools benchmarks examples hatch_build.py
	$(BIN)/ruff format --check timelined tests tools benchmarks examples hatch_build.py

typecheck: $(STAMP_TEST) $(GEN)
	$(BIN)/mypy

pytest: $(STAMP_TEST) $(GEN)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make generate: the blocking client (timelined/client_sync.py) from the async one (client.py)
generate: $(STAMP_TEST)
	$(BIN)/python tools/async_to_sync.py

## make bench: every performance target, measured against this machine's raw limits
bench: $(STAMP_TEST) $(GEN)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(STAMP_TEST) $(GEN)
	$(BIN)/python -m benchmarks --quick

## make stress ROUNDS=N PG_SECONDS=S: the long torture runs (kill -9, crash states, fuzzing;
## two daemons x 64 connections on one PostgreSQL database for S seconds)
stress: $(STAMP_TEST) $(GEN)
	TIMELINED_STRESS_ROUNDS=$(ROUNDS) TIMELINED_PG_STRESS_SECONDS=$(PG_SECONDS) $(BIN)/python -m pytest -q -m stress -p no:cacheprovider tests/stress $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
