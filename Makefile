# Entry points of the project. `make test` is what CI (.ci/run) and a new user run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (the versions this project is tested with); override e.g.
# `make install TORCH_SPEC="torch torchvision"` to let pip choose.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test test-all bench bench-core complexity reproduce-cifar reproduce-imagenet reproduce-cityscapes tables clean

# Reproduction: PROFILE=quick (2-core CPU, ~30 min) or full (the paper's recipe; GPU).
PROFILE ?= full
RUNS ?= runs
CIFAR_ROOT ?= $(if $(wildcard ../shared/data/cifar10/cifar10_train.npz),../shared/data/cifar10,data/cifar10)
DATA ?=

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

bench: install          # model-level speed: dense vs decomposed, all backends -> results/speed.md
	$(PY) -m src.bench

bench-core: install     # core benchmark: structural-loss overhead, per-layer timings -> results/bench_core.md
	$(PY) -m src.bench.core --out results/bench_core.md

complexity: install
	$(PY) -m src.complexity > /dev/null && echo "wrote results/complexity.md"

reproduce-cifar: install
	$(PY) -m experiments.reproduce --profile $(PROFILE) --data $(CIFAR_ROOT) --runs $(RUNS)
	$(MAKE) tables PROFILE=$(PROFILE)

tables: install
	$(PY) -m src.tables --runs $(RUNS)/$(PROFILE) --out results/$(PROFILE)

reproduce-imagenet: install
	@test -n "$(DATA)" || { echo "usage: make reproduce-imagenet DATA=/path/to/imagenet (train/ and val/ folders)"; exit 2; }
	$(PY) -m experiments.reproduce --profile imagenet --data $(DATA) --runs $(RUNS)
	$(MAKE) tables PROFILE=imagenet

reproduce-cityscapes: install
	@test -n "$(DATA)" || { echo "usage: make reproduce-cityscapes DATA=/path/to/cityscapes"; exit 2; }
	$(PY) -m experiments.reproduce --profile cityscapes --data $(DATA) --runs $(RUNS)
	$(MAKE) tables PROFILE=cityscapes

clean:
	rm -rf $(VENV) .pytest_cache
