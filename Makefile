# Entry points (see README): `make tutorials`, `make book` and `make test`.
# Each creates or reuse .venv, install torch first (a CPU build: pip must never resolve a bare
# torch, which pulls several GB of CUDA packages), then this package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
BUILD := build/tutorials
# One torch thread: on small 2-core machines two threads are often slower than one.
export OMP_NUM_THREADS ?= 1

BOOK := build/book
# The executed notebooks the site is built from: make tutorials writes them here.
EXECUTED ?= $(BUILD)

.PHONY: setup browser-setup tutorials book lab test

setup: $(VENV)/.installed

# nlb-tools goes in with --no-deps, not in the test extra: its metadata pins pandas<=1.3.4 (ours needs
# >=2.1) and pulls pynwb, while nlb_tools.evaluation, which the metric tests compare with, needs neither.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[notebooks,test,docs]"
	$(BIN)/python -m pip install --quiet --no-deps "nlb-tools==0.0.4"
	touch $@

tutorials: setup
	mkdir -p $(BUILD)
	LFADS_NB_LIVE=0 $(BIN)/python -m lfads_nb._run_notebooks tutorials $(BUILD)

# The course website from the executed notebooks in $(EXECUTED), never executed again; it names the
# tutorials not executed yet. `make book EXECUTED=test-artifacts/tutorials` uses the CI-size runs.
book: setup
	$(BIN)/python docs/book.py --executed $(EXECUTED) --out $(BOOK)

lab: setup
	$(BIN)/jupyter lab tutorials

# The browser test needs Chromium (apt, as root or with sudo) and playwright-core (npm).
browser-setup:
	tests/browser/setup.sh

test: setup browser-setup
	$(BIN)/python -m pytest
