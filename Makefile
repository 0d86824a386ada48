# Two commands for a newcomer: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run sandbox test lint typecheck fmt bench bench-events bench-backlog bench-forwarder lock clean

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
	$(BIN)/pytest -q --durations=15

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

# requirements.lock: the image's dependencies, pinned with their hashes (Dockerfile). Refresh
# after changing [project.dependencies] in pyproject.toml, or to take new releases.
lock: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
