PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck services bench clean

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
	$(BIN)/mypy src

services:
	bash scripts/install-services.sh

test: $(STAMP) lint typecheck services
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/middleware.py
	$(BIN)/python bench/brokers.py
	$(BIN)/python bench/schedules.py
	$(BIN)/python bench/sources.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
