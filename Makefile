# The two commands of the README: `make demo` and `make test`. Both set up what they need
# on a fresh Debian 12 machine as root (apt packages, then a virtualenv in .venv).
# lua5.1 (what Debian's Slurm links) and lua5.3 run slurm/job_submit.lua in the unit tests.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
# dpkg-dev, lintian, python3-click and python3-yaml: `make deb` and tests/privileged/test_deb.py
# (the package is installed for Debian's python3); rpm (rpmbuild) and rpmlint: `make rpm` and
# tests/unit/test_rpm.py.
# prometheus, prometheus-node-exporter: the metrics tests (tests/privileged/test_prometheus.py).
# aria2: the engine comparison of bench/coop_staging.py.
# All are installed by slurm/testcluster install-packages: service starts forbidden.
APT_PACKAGES := squashfs-tools python3-venv util-linux gcc make lua5.1 lua5.3 \
	dpkg-dev lintian rpm rpmlint python3-click python3-yaml \
	prometheus prometheus-node-exporter aria2

.PHONY: demo test test-slurm25 lint typecheck unit bench setup system-deps slurm-deps slurm-build clean deb rpm

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

setup: system-deps slurm-deps slurm-build $(VENV)/.installed

# The Slurm 25.11 tier (tests/e2e on a second Slurm, tests/e2e/test_pyslurm.py): with
# SCRATCH_STAGE_SLURM_TARBALL=<slurm-25.11.x.tar.gz> set, Slurm and the pyslurm wheel are
# built once into /var/cache/scratch-stage (slurm/build-slurm) and reused afterwards;
# SCRATCH_STAGE_SLURM_PREFIX=<installed prefix> uses one as it is. Neither set: skipped.
slurm-build:
	@if [ -n "$$SCRATCH_STAGE_SLURM_TARBALL" ] && [ -z "$$SCRATCH_STAGE_SLURM_PREFIX" ]; then \
	  bash slurm/build-slurm "$$SCRATCH_STAGE_SLURM_TARBALL" >/dev/null; fi

# Only the end-to-end tests on Slurm 25.11 (needs one of the two variables above).
test-slurm25: setup
	@if [ -z "$$SCRATCH_STAGE_SLURM_TARBALL$$SCRATCH_STAGE_SLURM_PREFIX" ]; then \
	  echo "make test-slurm25: set SCRATCH_STAGE_SLURM_TARBALL=<slurm-25.11.x.tar.gz> or SCRATCH_STAGE_SLURM_PREFIX=<prefix>" >&2; \
	  exit 2; fi
	$(BIN)/pytest -q tests/e2e -k slurm25.11

# Slurm 22.05 and munge for the local test cluster (installed with service starts
# forbidden: the tests and the demo start their own daemons and stop them by PID).
slurm-deps:
	bash slurm/testcluster install

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  bash slurm/testcluster install-packages $$missing; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,plot]' --config-settings editable_mode=compat
	touch $@

# dist/scratch-stage_<version>-1_all.deb (packaging/deb/build-deb), then lintian on it.
deb: setup
	packaging/deb/build-deb dist $(BIN)/python
	lintian --fail-on warning dist/scratch-stage_*_all.deb

# dist/scratch-stage-<version>-1.noarch.rpm from packaging/rpm/scratch-stage.spec (RHEL 9),
# then rpmlint with the reasons for what it still says (scratch-stage.rpmlintrc).
rpm: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" packaging/rpm/build-rpm dist
	rpmlint -r packaging/rpm/scratch-stage.rpmlintrc packaging/rpm/scratch-stage.spec \
	  dist/scratch-stage-*.noarch.rpm

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist
