# Entry points of the project. `make test` is what CI (.ci/run) and a new user run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (the versions this project is tested with); override e.g.
# `make install TORCH_SPEC="torch torchvision"` to let pip choose.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: help install test test-all bench bench-core complexity gpu-smoke compare-cifar reproduce-cifar reproduce-imagenet reproduce-cityscapes tables notebook clean

# Reproduction (profiles: conf/profiles/<name>.yaml): PROFILE=quick (2-core CPU, ~30 min),
# medium_sweep + medium (the CPU reference: hours, resumable), or full (the paper's recipe; GPU:
# refused without one, with an estimate of its time here, unless FORCE=1). Runs and their tables go
# to $(RUNS)/<profile> only. COLLECT=1 (maintainers) also copies each finished run's logs into
# results/<profile>/runs and regenerates the committed tables there (make tables; medium_sweep:
# results/medium/sweep; medium_gap, why the structured models trail dense: results/medium/gap).
PROFILE ?= full
RESULTS_medium_sweep = results/medium/sweep
RESULTS_medium_gap = results/medium/gap
RESULTS ?= $(or $(RESULTS_$(PROFILE)),results/$(PROFILE))
DEVICE ?= cuda
RUNS ?= runs
# extra arguments of experiments.reproduce (e.g. --only resnet20, --jobs 1, --allow-dirty)
REPRODUCE_ARGS ?=
# COLLECT=1: copy finished runs' logs into results/ and regenerate the committed tables (make tables)
COLLECT ?=
# FORCE=1: run a GPU profile (full, imagenet, cityscapes) on a machine without a GPU
FORCE ?=
REPRODUCE = $(PY) -m experiments.reproduce --runs $(RUNS) $(if $(COLLECT),--collect) $(if $(FORCE),--force-cpu)
# CIFAR-10 folder (npz pair or torchvision's cifar-10-batches-py/); fetched there when absent and online.
CIFAR_ROOT ?= data/cifar10
DATA ?=

help:                   ## list the targets
	@echo "make help                         this list"
	@echo "make install                      create .venv (Python 3.11, pinned torch) and install the project"
	@echo "make test                         the default test suite (fast; CI runs this)"
	@echo "make test-all                     every test, slow ones included"
	@echo "make reproduce-cifar [PROFILE=quick|medium_sweep|medium|medium_gap|full] [CIFAR_ROOT=dir]"
	@echo "                                  train dense / A / B on CIFAR-10 into runs/<profile>, then its tables in"
	@echo "                                  runs/<profile>/tables (quick: 25-50 min on 2 CPU cores; medium_sweep then"
	@echo "                                  medium: the CPU reference, about 20 h, resumable; full: the paper's GPU"
	@echo "                                  recipe, FORCE=1 on a CPU). COLLECT=1: into results/ too, then make tables"
	@echo "make compare-cifar PROFILE=medium pruning / SVD / structured fine-tuned from the medium dense runs, at equal MACs"
	@echo "make gpu-smoke [DEVICE=cuda|cpu]  exactness on the device, one CIFAR-10 epoch, speed pairs (< 8 min on a GPU)"
	@echo "make reproduce-imagenet DATA=dir  the ImageNet runs (GPU-sized)"
	@echo "make reproduce-cityscapes DATA=dir the Cityscapes runs (GPU-sized)"
	@echo "make notebook                     execute notebooks/analysis.ipynb and save its outputs (ANALYSIS_RUNS=runs/quick: your runs)"
	@echo "make tables [PROFILE=...]         the committed tables and plots: results/<profile>/runs -> results/<profile>"
	@echo "make complexity                   results/complexity.md (params / mults / adds of every model)"
	@echo "make bench                        model-level speed benchmark -> results/speed.md (quiet machine, ~3 h here; rerun resumes)"
	@echo "make bench-core                   core benchmark -> results/bench_core.md"
	@echo "make clean                        remove .venv and caches"

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

reproduce-cifar: install  # into $(RUNS)/<profile> (tables: $(RUNS)/<profile>/tables); COLLECT=1: results/ too
	@$(REPRODUCE) --profile $(PROFILE) --data $(CIFAR_ROOT) $(REPRODUCE_ARGS)
	$(if $(COLLECT),$(MAKE) tables PROFILE=$(PROFILE))

compare-cifar: install   # compression baselines at equal MACs from the medium profile's dense runs (PROFILE=medium)
	@test "$(PROFILE)" = medium || { echo "usage: make compare-cifar PROFILE=medium (the baselines start from that profile's trained resnet20 runs)"; exit 2; }
	@$(REPRODUCE) --profile medium_compare --data $(CIFAR_ROOT) $(REPRODUCE_ARGS)
	$(if $(COLLECT),$(MAKE) tables PROFILE=medium)

gpu-smoke: install       # what a lent GPU runs first: exactness on the device, one CIFAR-10 epoch, speed pairs (< 8 min)
	$(PY) -m experiments.gpu_smoke --data $(CIFAR_ROOT) --device $(DEVICE) --out $(RUNS)/gpu_smoke

notebook: install        # the analysis notebook, executed in place (committed logs and models by default)
	$(PY) -m experiments.notebook

tables: install          # the committed tables, from the collected run logs (results/<profile>/runs)
	$(PY) -m src.tables --runs $(RESULTS)/runs --out $(RESULTS) --quiet

reproduce-imagenet: install
	@test -n "$(DATA)" || { echo "usage: make reproduce-imagenet DATA=/path/to/imagenet (train/ and val/ folders)"; exit 2; }
	@$(REPRODUCE) --profile imagenet --data $(DATA) $(REPRODUCE_ARGS)
	$(if $(COLLECT),$(MAKE) tables PROFILE=imagenet)

reproduce-cityscapes: install
	@test -n "$(DATA)" || { echo "usage: make reproduce-cityscapes DATA=/path/to/cityscapes"; exit 2; }
	@$(REPRODUCE) --profile cityscapes --data $(DATA) $(REPRODUCE_ARGS)
	$(if $(COLLECT),$(MAKE) tables PROFILE=cityscapes)

clean:
	rm -rf $(VENV) .pytest_cache
