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
	etcd-server etcd-client nftables

# Installs the Debian packages given that are missing (apt-get update first, once).
define apt_install
missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages: $$missing"; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
fi
endef

# `make hwlab` boots the virtual SR-IOV lab and runs hw-lab/suite in it;
# `make hwlab INVENTORY=hw-lab/inventories/<name>.yaml` runs the same suite on this node's PFs.
INVENTORY ?=

# `make fuzz` fuzzes every target of tests/fuzz (coverage-guided, atheris) for FUZZ_SECONDS in
# total, or only FUZZ_TARGETS (cni shim wire dpconfig policy ipamconfig grpc); what it finds is
# kept in tests/fuzz/corpus (docs/fuzzing.md). `make test` replays that corpus and runs a short
# seeded pass of every target (tests/fuzz/test_fuzz.py, part of `pytest tests`).
FUZZ_SECONDS ?= 240
FUZZ_TARGETS ?=

# `make e2e`: containerd's CRI plugin (Debian containerd, runc) drives the installed shim, the
# agent running as the chart's DaemonSet runs it (tests/e2e). The image comes from `make image`
# (reused while its sources are unchanged); E2E_IMAGE=venv runs the agent from .venv instead.
E2E_APT_PACKAGES := containerd runc podman

.PHONY: demo test unit host lint bench deps venv clean hwlab hwlab-setup fuzz fuzz-replay e2e \
	e2e-deps

# `make lock` refreshes the hash-checked lock files from pyproject.toml (runtime dependencies,
# [build-system] requires, the test extra) and requirements/constraints.txt, resolved on
# LOCK_INDEX_URL alone (this host's find-links and local indexes are left out, so every hash is
# of a file that index serves). Commit the result; the image, `make venv` and CI install from it.
.PHONY: lock image
LOCK_INDEX_URL ?= https://pypi.org/simple
LOCK_VENV := build/lock-venv
PIP_TOOLS := pip-tools==7.5.1
COMPILE = PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make lock" \
	$(LOCK_VENV)/bin/pip-compile -q \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--index-url $(LOCK_INDEX_URL) $(if $(PIP_CERT),--cert $(PIP_CERT)) --upgrade

lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
	  { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q '$(PIP_TOOLS)'; }
	$(COMPILE) -c requirements/constraints.txt -o requirements/runtime.txt pyproject.toml
	$(COMPILE) --all-build-deps --only-build-deps -c requirements/runtime.txt \
	  -o requirements/build.txt pyproject.toml
	$(COMPILE) --all-build-deps --extra test -c requirements/runtime.txt \
	  -o requirements/dev.txt pyproject.toml

# `make image` builds the agent's image with podman where no registry is reachable (a local
# Debian base from debootstrap; deploy/image/build.sh). IMAGE=name:tag to name it.
IMAGE_APT_PACKAGES := podman runc debootstrap

image:
	@$(call apt_install,$(IMAGE_APT_PACKAGES))
	deploy/image/build.sh

deps:
	@$(call apt_install,$(APT_PACKAGES))

# Dependencies come from the lock (requirements/dev.txt: runtime, test and build tools, every
# file hash-checked), the project itself after them without dependencies or build isolation.
# A dependency in pyproject.toml the lock lacks (run `make lock`): `pip check` stops here for a
# runtime one, tests/unit/test_lock.py for any.
$(STAMP): pyproject.toml setup.py requirements/dev.txt $(wildcard native/*.c native/*.h native/*.py)
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
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
	@$(call apt_install,$(E2E_APT_PACKAGES))

e2e: venv e2e-deps
	$(PY) -m pytest tests/e2e

test: lint
	$(PY) -m pytest tests --ignore=tests/e2e  # with tests/fuzz: the corpus and a seeded pass
	@$(MAKE) --no-print-directory e2e
	@$(MAKE) --no-print-directory hwlab

fuzz: venv
	$(PY) -m tests.fuzz.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-replay: venv
	$(PY) -m pytest tests/fuzz

bench: venv
	@for bench in tests/bench/bench_*.py; do \
	  $(PY) -m tests.bench.$$(basename $$bench .py) || exit 1; \
	done

demo: hwlab-setup
	$(PY) hw-lab/run.py --demo

clean:
	rm -rf $(VENV) build *.egg-info nodeagent/_*.so cni/bin
