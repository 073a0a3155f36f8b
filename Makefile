# Two commands do all set-up on a fresh machine: `make demo` (the whole pipeline, offline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo seed test test-fast ui dashboard setup system-deps lint bench search study clean-demo exp-show gpu-check gpu-wheels

# uv installs the ~6 GB of wheels (torch's CUDA build and its libraries) in about 30 s where pip takes about
# 3 minutes on 2 cores. uv reads no pip configuration, so pip's own (indexes, find-links, constraints, as
# `pip config list` shows them) is handed to it; where uv cannot be installed, pip does the work.
# The bytecode is compiled after the install, only where it is needed (netslim.tools.bytecode): before `make demo` the
# 5,300 files the pipeline imports (4 s here), before `make test` the other 12,600 (11 s more). Where
# PYTHONDONTWRITEBYTECODE is set no .pyc is ever written on import, so every stage would compile torch and mlflow again
# (measured here: 23 s instead of 6 s per stage); compiling all 17,900 files at install, as pip and uv's
# --compile-bytecode do, took 15 of the demo's 20 s of set-up.
# postgres extra: the multi-worker search test runs on a real server; dashboard: `make dashboard` (optuna-dashboard).
PIP_SETTINGS_FOR_UV = $(BIN)/pip config list | \
  sed -n "s/^[^.]*\.\(index-url\|extra-index-url\|find-links\|constraint\)='\(.*\)'$$/\1 \2/p" | \
  while read -r key values; do for value in $$values; do echo "--$$key $$value"; done; done
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	if $(BIN)/pip install -q uv; then \
	  $(BIN)/uv pip install -q --python $(BIN)/python --index-strategy unsafe-best-match \
	    $$($(PIP_SETTINGS_FOR_UV)) -e '.[dev,postgres,dashboard]'; \
	else \
	  $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q --no-compile -e '.[dev,postgres,dashboard]'; \
	fi
	touch $(STAMP)

BYTECODE_LIST := src/netslim/tools/pipeline_imports.txt
PIPELINE_BYTECODE := $(VENV)/.bytecode-pipeline
ALL_BYTECODE := $(VENV)/.bytecode-all
$(PIPELINE_BYTECODE): $(STAMP) $(BYTECODE_LIST)
	$(BIN)/python -m netslim.tools.bytecode compile --list $(BYTECODE_LIST)
	touch $@
$(ALL_BYTECODE): $(STAMP)
	$(BIN)/python -m netslim.tools.bytecode compile --all
	touch $@

# `dvc plots show` writes a page that loads vega, vega-lite and vega-embed from a CDN: blank offline. .dvc/config
# (plots.html_template) points it at this page instead, which carries the three bundles inline, from npm, at the
# major versions dvc-render writes its specs for (vega-lite v5). Built here, not committed: 0.8 MB of minified code.
# set -e: a missing bundle fails the build instead of leaving a page without it; the trap drops a half-written page.
PLOTS_PAGE := .dvc/plots/offline.html
VEGA_PACKAGES := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
VEGA_BUILD := $(VENV)/vega/node_modules
$(PLOTS_PAGE): Makefile | system-deps
	npm install --prefix $(VENV)/vega --no-save --no-audit --no-fund --silent $(VEGA_PACKAGES)
	set -e; trap 'rm -f $@.tmp' EXIT; \
	{ printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC plots</title>\n'; \
	  for js in vega vega-lite vega-embed; do \
	    printf '<script>\n'; cat $(VEGA_BUILD)/$$js/build/$$js.min.js; printf '\n</script>\n'; \
	  done; \
	  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'; \
	} > $@.tmp; mv $@.tmp $@

# The venv (uv, then the pipeline's bytecode on every core) and the plots page (npm, waiting on the registry) are made
# side by side.
setup:
	@$(MAKE) --no-print-directory -j2 system-deps $(STAMP) $(PLOTS_PAGE) $(PIPELINE_BYTECODE)

# Debian packages: the embedded dataset, PostgreSQL for the multi-worker Optuna test, npm for `dvc plots show`'s page.
system-deps:
	@missing=""; \
	test -f $(FMNIST) || missing="$$missing dataset-fashion-mnist"; \
	command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "netslim needs the Debian package(s)$$missing: run 'sudo apt-get install$$missing' (or set data.fashion_mnist_path)"; \
	    test -f $(FMNIST) || exit 1; fi; \
	fi

# params.yaml is the embedded offline run: the demo reproduces it as the DVC experiment demo-<time>.
demo: setup
	$(BIN)/python -m netslim.demo

# The seed experiment (CIFAR-10, full-width ResNet-50, 40 + 20 epochs) on a GPU machine: profiles/seed.yaml's overrides
# as the DVC experiment seed-<time>; the workspace is then the seed's, as after any `dvc exp run -S`.
seed: setup
	$(BIN)/python -m netslim.demo --profile profiles/seed.yaml --name seed

# Two pytest workers, each taking whole test files (--dist loadfile: a module's tiny pipeline runs once, in one
# worker), the longest files first as tests/conftest.py orders them (--no-loadscope-reorder: xdist would reorder
# them by their number of tests, and the longest file, with few tests, started last and ran alone). The CPUs are
# split between the workers: more OpenMP threads than cores make torch's kernels spin against each other (measured
# here: an in-process 17 s test took 176 s with two workers of two threads on 2 cores). The stages that tests start
# inherit the thread count.
TEST_WORKERS ?= 2
TEST_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 1); t=$$((n / $(TEST_WORKERS))); echo $$((t > 0 ? t : 1)))
PYTEST := OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup $(ALL_BYTECODE)
	$(PYTEST) --durations=15

test-fast: setup $(ALL_BYTECODE)
	$(PYTEST) -m "not slow"

# The stages' default tracking store (artifacts in ./mlruns); one worker and no job runner suit a laptop.
# First the link that opens the experiment's runs table (MLflow 3 would open its GenAI traces page).
UI_PORT ?= 5000
UI_STORE := sqlite:///mlflow.db
ui: $(STAMP) $(ALL_BYTECODE)
	@$(BIN)/python -m netslim.mlflow_ui --backend-store-uri $(UI_STORE) --host 127.0.0.1 --port $(UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(UI_STORE) \
	  --host 127.0.0.1 --port $(UI_PORT) --workers 1

# The optional pipelines are committed as <dir>/stages.yaml, out of DVC's sight until they are first run (a never-run
# stage makes a plain `dvc status` list every dependency as modified); their dvc.yaml is a copy, renewed when the
# committed stages change.
search/dvc.yaml studies/dvc.yaml: %/dvc.yaml: %/stages.yaml
	cp $< $@

search: setup $(ALL_BYTECODE) search/dvc.yaml
	$(BIN)/dvc repro search/dvc.yaml

# The studies (controls, ratio sweep, multi-pass; studies/params.yaml): about 20 minutes on this 2-core CPU after the
# demo, results in reports/studies/README.md.
study: setup $(ALL_BYTECODE) studies/dvc.yaml
	$(BIN)/dvc repro studies/dvc.yaml

# Optuna's dashboard on the search's study: the default SQLite file, or another storage with
# make dashboard STUDY=postgresql+psycopg://user:pw@host/netslim (the set-up installed it: the `dashboard` extra).
STUDY ?= sqlite:///reports/search/study.db
DASHBOARD_PORT ?= 8080
dashboard: $(STAMP) $(ALL_BYTECODE)
	$(BIN)/optuna-dashboard $(STUDY) --host 127.0.0.1 --port $(DASHBOARD_PORT)

# `dvc exp show` has a column per param and per model's metric (about 170): this keeps what tells experiments apart
# (README "DVC views"), so the table fits 160 columns. re.match patterns: a metric column is "<file>:<metric>".
EXP_SHOW_KEEP := Experiment|Created|reports/metrics/finetuned_.*:test_acc|prune\.lambda|finetune\.lr$$
exp-show: $(STAMP)
	$(BIN)/dvc exp show --no-pager --drop '.*' --keep '$(EXP_SHOW_KEEP)'

bench: setup
	$(BIN)/netslim bench

# One command for a lent GPU machine (docs/gpu.md): the seed's shapes timed and checked in under 8 minutes, written to
# reports/gpu/<gpu-name>.{json,md}; without CUDA it says so and runs its tiny CPU fallback. No `setup` first: a GPU
# image has torch but no network for the venv, so there it runs the machine's python3 on src/ (`make gpu-wheels`
# here first, for the two packages that image lacks).
GPU_CHECK_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON))
gpu-check:
	$(GPU_CHECK_PYTHON) -m netslim.tools.gpu_check $(GPU_CHECK_ARGS)

# The pure-Python packages gpu-check needs that the GPU image lacks, as wheels in .whl/ to carry (docs/gpu.md).
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --platform any -d .whl \
	  $$($(BIN)/python -c 'import importlib.metadata as m; print(*(f"{p}=={m.version(p)}" for p in ("ruamel.yaml", "thop")))')

lint: $(STAMP)
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests
