# bbproxy: the two README commands and the layers behind them.
#
#   make demo        build a local systemd Debian container, provision it with site.yml,
#                    show a TLS 1.0 client logging in through the proxy   (make demo-clean)
#   make test        apt packages (when root) + pinned venv, then every test layer:
#                    lint, Python tests, molecule test on Debian 12 and 13, two federating
#                    servers and the role's lifecycle (upgrade, faults, removal)
#
# Run `make help` for the single layers. Everything container-related needs root (privileged
# systemd containers); see docs/testing.md.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin

# Podman on this kind of machine needs runc, cgroupfs and raised ulimits (see the file).
export CONTAINERS_CONF := $(CURDIR)/molecule/image/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1

# What the layers need on the machine. prosody/socat/lua5.4: the proxy's integration tests
# run a private Prosody on loopback; podman/runc/iptables/debootstrap: the test containers;
# libstrophe0 ... default-jdk-headless: the interop matrix's clients (docs/interop.md).
APT_PACKAGES := podman runc iptables debootstrap debian-archive-keyring prosody socat lua5.4 \
	openssl make python3 python3-venv ca-certificates git \
	libstrophe0 go-sendxmpp sendxmpp python3-nbxmpp default-jdk-headless
# Only for the measurements (peers in the benchmark, the TLS scanner); `make deps` run through
# these targets installs them too (target-specific variables reach the prerequisites).
bench torture security: APT_PACKAGES += haproxy stunnel4 testssl.sh

# The published demo ports (127.0.0.1 only). Change them if they are taken: make demo DEMO_PORT=...
DEMO_PORT ?= 15222
DEMO_DIRECT_TLS_PORT ?= 15223
export DEMO_PORT DEMO_DIRECT_TLS_PORT

BBPROXY_PYPROJECT := $(wildcard files/bbproxy/pyproject.toml)

.PHONY: help deps interop-deps venv clean-venv image image-trixie lint lint-yaml lint-ansible lint-python \
	lint-types lint-shell lint-role-docs test-python molecule molecule-trixie molecule-federation molecule-lifecycle test demo demo-clean bench \
	torture security

help:
	@echo "make demo             provision a local container with site.yml and log in with TLS 1.0"
	@echo "make demo-clean       remove the demo container"
	@echo "make test             every layer below (what CI runs)"
	@echo "  make deps           apt packages (only when root and missing)"
	@echo "  make venv           .venv/ from requirements-dev.txt (+ files/bbproxy editable)"
	@echo "  make interop-deps   .interop/: the npm client of the interop matrix (pinned)"
	@echo "  make image          Debian 12 systemd image (cached by tag)"
	@echo "  make lint           yamllint, ansible-lint, ruff, mypy, shellcheck, role docs"
	@echo "  make test-python    pytest files/bbproxy/tests (and tools/tests if present)"
	@echo "  make molecule       molecule test: Debian 12 / Prosody 0.12"
	@echo "  make molecule-trixie  molecule test: Debian 13 / Prosody 13"
	@echo "  make molecule-federation  molecule test: two servers federating over s2s TLS"
	@echo "  make molecule-lifecycle   molecule test: upgrade, failed/killed runs, apt repair, state absent"
	@echo "make bench            benchmark vs same-run baselines, < 2 min (BENCH_ARGS=--full: < 15 min)"
	@echo "make torture          floods, hostile input, faults vs a real Prosody, < 10 min (TORTURE_ARGS=--short)"
	@echo "make security         testssl.sh policy check of a local proxy (docs/security.md), ~2 min"

# ---------------------------------------------------------------------------------------------
# Set-up

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then \
	  echo "deps: all apt packages present"; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "deps: not root, skipping apt. Missing:$$missing"; \
	  echo "deps: install them with: sudo apt-get install$$missing"; \
	else \
	  echo "deps: installing$$missing"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  if [[ " $$missing " == *" prosody "* ]] && [ -d /run/systemd/system ]; then \
	    echo "deps: stopping the host's new Prosody service; tests start their own on loopback"; \
	    systemctl disable --now prosody || true; \
	  fi; \
	fi

venv: $(VENV)/.requirements.stamp $(if $(BBPROXY_PYPROJECT),$(VENV)/.bbproxy.stamp)

$(VENV)/.requirements.stamp: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "venv: needs Python >= 3.11 as '$(PYTHON)'; e.g. make ... PYTHON=python3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

# The proxy package, editable, so its tests and the login tool import the working tree.
$(VENV)/.bbproxy.stamp: $(VENV)/.requirements.stamp $(BBPROXY_PYPROJECT)
	$(BIN)/python -m pip install --quiet --no-deps -e files/bbproxy
	@touch $@

clean-venv:
	rm -rf $(VENV)

# xmpp.js for the interop matrix (tests/integration/test_interop.py), pinned, inside the repo
# (.interop/ is ignored). Needs Node >= 20.10 with npm, which Debian 12 does not ship: without
# it this says so and the matrix's xmpp.js cells fail with the same hint.
XMPPJS_VERSION := 0.14.0
INTEROP_NPM := $(CURDIR)/.interop
interop-deps: $(INTEROP_NPM)/.xmppjs-$(XMPPJS_VERSION).stamp

$(INTEROP_NPM)/.xmppjs-$(XMPPJS_VERSION).stamp:
	@if ! command -v npm >/dev/null; then \
	  echo "interop-deps: npm not found; install Node >= 20.10 (e.g. NodeSource nodejs 20) for xmpp.js"; \
	else \
	  npm install --prefix $(INTEROP_NPM) --no-audit --no-fund --no-save @xmpp/client@$(XMPPJS_VERSION) \
	    && touch $@; \
	fi

image:
	molecule/image/build.sh bookworm

image-trixie:
	molecule/image/build.sh trixie

# ---------------------------------------------------------------------------------------------
# Test layers

# pytest exits 5 when it collected no tests. This is the one place that decides what that means:
#   $(call pytest_layer,NAME,required|optional,TEST PATH [PYTEST ARGS])
# A required layer that collects nothing (or whose test path is missing) fails; an optional one
# says so and counts as neither a pass nor a failure. Any other non-zero exit fails the layer.
define pytest_layer
	@if [ ! -e "$(firstword $(3))" ]; then rc=5; \
	else rc=0; $(BIN)/pytest $(3) || rc=$$?; fi; \
	if [ $$rc -eq 5 ]; then \
	  if [ "$(2)" = required ]; then \
	    echo "FAIL: test layer '$(1)' collected no tests ($(firstword $(3))); it must have tests" >&2; exit 1; \
	  else \
	    echo "NOTE: test layer '$(1)' has no tests ($(firstword $(3))): nothing run, not counted as a pass"; \
	  fi; \
	elif [ $$rc -ne 0 ]; then \
	  echo "FAIL: test layer '$(1)' (pytest exit $$rc)" >&2; exit $$rc; \
	fi
endef

# Lint only tracked and new files (never .venv/ or other ignored trees).
YAML_FILES = $(shell git ls-files --cached --others --exclude-standard -- '*.yml' '*.yaml' | sort -u)
PY_DIRS = $(wildcard files/bbproxy tools molecule/shared/tests molecule/federation/tests molecule/lifecycle scripts bench)
SHELL_FILES = .ci/run $(shell git ls-files --cached --others --exclude-standard -- '*.sh' | sort -u)

# Every linter runs (-k) even when an earlier one fails, so one run shows every finding.
lint: venv
	@$(MAKE) -k lint-yaml lint-ansible lint-python lint-types lint-shell lint-role-docs

lint-yaml:
	@echo "--- yamllint"
	$(BIN)/yamllint $(YAML_FILES)

lint-ansible:
	@echo "--- ansible-lint"
	$(BIN)/ansible-lint

lint-python:
	@echo "--- ruff"
	$(BIN)/ruff check $(PY_DIRS)

lint-shell:
	@echo "--- shellcheck"
	$(BIN)/shellcheck $(SHELL_FILES)

# The role's README variables table and defaults/main.yml against meta/argument_specs.yml.
lint-role-docs:
	@echo "--- role docs (roles/bbproxy/tests/check_docs.py)"
	$(BIN)/python roles/bbproxy/tests/check_docs.py

lint-types:
	@if [ -d files/bbproxy/src ]; then \
	  echo "--- mypy (files/bbproxy/src)"; \
	  cd files/bbproxy && $(BIN)/mypy src; \
	fi

test-python: venv interop-deps
	$(call pytest_layer,bbproxy,required,files/bbproxy/tests)
	$(call pytest_layer,tools,optional,tools/tests)

# molecule test = destroy, syntax, create, check, converge, idempotence, verify, destroy.
molecule: venv image
	$(BIN)/molecule test -s default

molecule-trixie: venv image-trixie
	$(BIN)/molecule test -s trixie

# Two Debian 12 servers federating over s2s TLS in backend_secure mode (and the disabled mode
# failing); Debian 13: BBPROXY_FEDERATION_SUITE=trixie (make image-trixie first).
molecule-federation: venv image
	$(BIN)/molecule test -s federation

# The role's lifecycle on Debian 12: upgrade from an older build, re-runs after a failed run, a
# killed run and an interrupted apt, bbproxy_state absent (Prosody on its own TLS), reinstall.
molecule-lifecycle: venv image
	$(BIN)/molecule test -s lifecycle

# Every layer runs even when an earlier one fails, so one CI run shows every failure; the
# summary at the end says which failed and how long each took. Debian 13 adds about 4 minutes and
# the two-server federation scenario about 6; skip them locally with:
# make test TEST_LAYERS="lint test-python molecule"
TEST_LAYERS ?= lint test-python molecule molecule-trixie molecule-federation molecule-lifecycle
test: deps venv
	@failed=""; summary=""; start_all=$$SECONDS; \
	for layer in $(TEST_LAYERS); do \
	  echo; echo "=================== make $$layer"; start=$$SECONDS; \
	  if $(MAKE) $$layer; then result=ok; else result=FAILED; failed="$$failed $$layer"; fi; \
	  summary="$$summary$$(printf '  %-16s %-7s %4ss' $$layer $$result $$((SECONDS - start)))\n"; \
	done; \
	echo; echo "=================== summary ($$((SECONDS - start_all))s)"; printf "$$summary"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed" >&2; exit 1; fi; \
	echo "all test layers passed"

# ---------------------------------------------------------------------------------------------
# Demo

demo: deps venv image
	scripts/demo.sh up

demo-clean:
	scripts/demo.sh clean

# ---------------------------------------------------------------------------------------------
# Benchmark (bench/README.md): loopback only, bounded; a report in bench/results/.

BENCH_ARGS ?= --quick
bench: deps venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Torture run (issue 9): bbproxy in front of a real Prosody on loopback, bounded; the table is
# written to bench/results/. Its short form runs in `make test` (tests/integration/test_torture_short.py).
TORTURE_ARGS ?= --full
torture: deps venv
	$(BIN)/python bench/torture.py $(TORTURE_ARGS)

# testssl.sh against a proxy on loopback, checked against the TLS policy (docs/security.md).
SECURITY_ARGS ?= --quick
SECURITY_OUT ?= $(CURDIR)/security-results
security: deps venv
	tools/security_scan.sh $(SECURITY_ARGS) $(SECURITY_OUT)
