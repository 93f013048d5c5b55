PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# extra pytest arguments: make test ARGS='-k redis'
ARGS ?=

.PHONY: demo check test lint typecheck services bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pywork demo

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy src tests

# lint and types: what CI checks before it runs the tests
check: lint typecheck

services:
	bash scripts/install-services.sh

# the whole suite, as CI runs it (.ci/run)
test: check services
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/middleware.py
	$(BIN)/python bench/brokers.py
	$(BIN)/python bench/schedules.py
	$(BIN)/python bench/tasks.py
	$(BIN)/python bench/sources.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
