# Every target does its own set-up, idempotently, on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup test demo down crds contracts bench clean container-tools c-compiler

setup: $(VENV)/.stamp /usr/share/java/zookeeper.jar contracts/node_modules/.stamp /usr/bin/chromedriver container-tools c-compiler

# Units run in podman containers (runc: crun fails on cgroup v1/hybrid hosts); mmdebstrap builds the
# demo's python image from Debian packages; busybox-static makes the runtime's self-test image.
container-tools:
	@for c in podman runc newuidmap slirp4netns fuse-overlayfs mmdebstrap busybox; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	  --no-install-recommends podman runc uidmap slirp4netns fuse-overlayfs mmdebstrap busybox-static; fi

# the local backend builds its spawner (adapters/local/boid_spawn.c) with cc on first use
c-compiler:
	@command -v cc >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends gcc libc6-dev; }

/usr/share/java/zookeeper.jar:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends zookeeper default-jre-headless openssl

# a real headless browser for the dashboard's tests (tests/browser)
/usr/bin/chromedriver:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver

$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

contracts/node_modules/.stamp: contracts/package.json
	command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	if [ -f contracts/package-lock.json ]; then cd contracts && npm ci --no-audit --no-fund --loglevel=error; fi
	mkdir -p contracts/node_modules && touch $@

test: setup
	$(BIN)/pytest

# The demo runs in a fresh state directory, to its summary, then stops what it started.
# For a cluster that keeps running, use `boidctl up` (and `boidctl down`) yourself.
DEMO_HOME := $(CURDIR)/.state/demo
demo: setup
	BOID_HOME=$(DEMO_HOME) $(BIN)/boidctl down >/dev/null 2>&1 || true
	rm -rf $(DEMO_HOME)
	BOID_HOME=$(DEMO_HOME) $(BIN)/boidctl up --stop || { BOID_HOME=$(DEMO_HOME) $(BIN)/boidctl down; exit 1; }

down:
	BOID_HOME=$(DEMO_HOME) $(BIN)/boidctl down

crds: $(VENV)/.stamp
	$(BIN)/boidctl crds --out crds

contracts: contracts/node_modules/.stamp
	cd contracts && npm run --silent build

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .state contracts/node_modules
