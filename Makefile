# Two commands for a newcomer: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run sandbox test lint typecheck fmt bench bench-events bench-backlog bench-forwarder clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/ctmm-bridge serve

sandbox: $(VENV)/.installed
	$(BIN)/ctmm-bridge sandbox

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed-dev
	bash bench/run.sh

bench-events: $(VENV)/.installed-dev
	$(BIN)/python bench/events.py

bench-backlog: $(VENV)/.installed-dev
	$(BIN)/python bench/backlog.py

bench-forwarder: $(VENV)/.installed-dev
	$(BIN)/python bench/forwarder.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
