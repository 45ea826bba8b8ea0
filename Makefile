# Entry points: `make demo`, `make test`, `make bench`. Each installs what it needs on a fresh
# Debian machine of this kind (Debian packages by name, Python packages into .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# iproute2: `ip` in tests and the demo; libudev1: pyudev; gcc + libc6-dev: native/ (cffi and the
# CNI shim); containernetworking-plugins: the reference plugins tests and benchmarks compare
# against; valgrind: memory checks of the shim; etcd-server (+ etcdctl from etcd-client): the
# cluster-wide IPAM store's tests and benchmark run a real etcd on loopback.
APT_PACKAGES := iproute2 libudev1 gcc libc6-dev containernetworking-plugins valgrind \
	etcd-server etcd-client

# `make hwlab` boots the virtual SR-IOV lab and runs hw-lab/suite in it;
# `make hwlab INVENTORY=hw-lab/inventories/<name>.yaml` runs the same suite on this node's PFs.
INVENTORY ?=

# `make e2e`: containerd's CRI plugin (Debian containerd, runc) drives the installed shim, the
# agent running as the chart's DaemonSet runs it (tests/e2e). The image comes from `make image`
# (reused while its sources are unchanged); E2E_IMAGE=venv runs the agent from .venv instead.
E2E_APT_PACKAGES := containerd runc podman

.PHONY: demo test unit host lint bench deps venv clean hwlab hwlab-setup e2e e2e-deps

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard native/*.c native/*.h native/*.py)
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

unit: venv
	$(PY) -m pytest tests/unit

host: venv
	$(PY) -m pytest tests/host

hwlab-setup: venv
	hw-lab/setup.sh

ifeq ($(INVENTORY),)
hwlab: hwlab-setup
	$(PY) hw-lab/run.py
else
hwlab: venv
	$(PY) hw-lab/run.py --inventory $(INVENTORY)
endif

e2e-deps:
	@missing=$$(for p in $(E2E_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

e2e: venv e2e-deps
	$(PY) -m pytest tests/e2e

test: lint
	$(PY) -m pytest tests --ignore=tests/e2e
	@$(MAKE) --no-print-directory e2e
	@$(MAKE) --no-print-directory hwlab

bench: venv
	@for bench in tests/bench/bench_*.py; do \
	  $(PY) -m tests.bench.$$(basename $$bench .py) || exit 1; \
	done

demo: hwlab-setup
	$(PY) hw-lab/run.py --demo

clean:
	rm -rf $(VENV) build *.egg-info nodeagent/_*.so cni/bin
