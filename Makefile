# Quick start on a fresh machine:  make demo   and   make test
# Both create .venv when it is missing. torch is installed first and pinned, so that a CPU
# machine gets the CPU wheel instead of a multi-GB CUDA build; on a machine whose pip does
# not find a CPU wheel by itself, pass e.g. TORCH_PIP_ARGS="--index-url <your CPU wheel index>".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install dev demo test test-slow lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed  ## the package and its runtime dependencies

dev: $(VENV)/.installed-dev  ## plus the test and lint tools

demo: install  ## the main job on the embedded default
	$(BIN)/lit-search-rl demo --out $(RUN_DIR)

test: dev  ## the fast test suite (CPU, a few minutes)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: dev  ## the slow tests only
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check lit_search_rl tests benchmarks
	$(BIN)/ruff format --check lit_search_rl tests benchmarks

format: dev
	$(BIN)/ruff check --fix lit_search_rl tests benchmarks
	$(BIN)/ruff format lit_search_rl tests benchmarks

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache .ruff_cache
