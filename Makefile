# greenroom: `make demo` and `make test` set up everything they need on a fresh Debian machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
PYTEST_ARGS ?=

.PHONY: test demo bench servers venv lint clean compiled clean-compiled

test: venv servers lint  ## pyflakes, then the whole test suite against real servers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv servers  ## local Redis + ngircd + prosody, the frontend and the echo backend; Ctrl-C stops all
	$(BIN)/python -m tests.support.demo

bench: venv servers  ## the benchmark harness (not part of `make test`)
	bash tests/bench/install.sh
	[ -x $(BIN)/py-spy ] || $(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { $(APT) update -qq && $(APT) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The chat and queue servers the tests and the demo start on loopback (never as system services):
# redis-server (also as sentinels and cluster nodes; redis-tools for redis-cli), ngircd, prosody,
# InspIRCd 3 (installs beside ngircd) and Atheme services; and Debian's chromium + chromedriver for
# the dashboard's browser test. A policy-rc.d that refuses every start is in place while apt runs
# (restored after), so no package starts its daemon. Nothing to do, and no apt call, when all are there.
SERVER_BINARIES := redis-server redis-cli ngircd prosody prosodyctl inspircd atheme-services chromium chromedriver
SERVER_PACKAGES := redis-server redis-tools ngircd prosody inspircd atheme-services chromium chromium-driver
servers:
	@missing=""; \
	for b in $(SERVER_BINARIES); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$b"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && $(SUDO) chmod +x /usr/sbin/policy-rc.d; \
	    trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  $(APT) update -qq && $(APT) install -y -qq $(SERVER_PACKAGES); \
	fi

compiled: venv  ## optional: the hot-path modules compiled by Cython (the sources stay the reference; see BENCHMARKS.md)
	@command -v gcc >/dev/null 2>&1 && $(BIN)/python -c "import os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || \
	  { $(APT) update -qq && $(APT) install -y -qq gcc python3-dev; }
	$(BIN)/pip install -q -e '.[compiled]'
	$(BIN)/python -m frontend.compiled build

clean-compiled:  ## back to the pure-Python build
	[ ! -x $(BIN)/python ] || $(BIN)/python -m frontend.compiled clean
	rm -rf build/compiled

lint: venv  ## pyflakes over the code and the tests
	$(BIN)/python -m pyflakes frontend backend_sdk tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis build/compiled
	find frontend -name '*.so' -delete
