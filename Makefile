# The two commands of the README: `make demo` and `make test`. Both set up what they need
# on a fresh Debian 12 machine as root (apt packages, then a virtualenv in .venv).
# lua5.1 (what Debian's Slurm links) and lua5.3 run slurm/job_submit.lua in the unit tests.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := squashfs-tools python3-venv util-linux gcc make lua5.1 lua5.3

.PHONY: demo test lint typecheck unit bench setup system-deps slurm-deps clean

demo: setup
	bash demo/demo.sh

test: setup lint typecheck
	$(BIN)/pytest -q tests

lint: setup
	$(BIN)/ruff check scratch_stage tests bench
	$(BIN)/ruff format --check scratch_stage tests bench

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/prolog_hot_path.py
	$(BIN)/python bench/staging_throughput.py
	$(BIN)/python bench/planner_scaling.py
	$(BIN)/python bench/rebalance_idle.py
	$(BIN)/python bench/job_start.py
	$(BIN)/python bench/simulate_policies.py tables

setup: system-deps slurm-deps $(VENV)/.installed

# Slurm 22.05 and munge for the local test cluster (installed with service starts
# forbidden: the tests and the demo start their own daemons and stop them by PID).
slurm-deps:
	bash slurm/testcluster install

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,plot]' --config-settings editable_mode=compat
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
