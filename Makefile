# Entry points of the project. `make test` is what CI (.ci/run) and a new user run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (the versions this project is tested with); override e.g.
# `make install TORCH_SPEC="torch torchvision"` to let pip choose.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test test-all bench complexity clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

bench: install
	$(PY) -m src.bench.core

complexity: install
	$(PY) -m src.complexity > /dev/null && echo "wrote results/complexity.md"

clean:
	rm -rf $(VENV) .pytest_cache
