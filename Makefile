# bbproxy: the two README commands and the layers behind them.
#
#   make demo        build a local systemd Debian container, provision it with site.yml,
#                    show a TLS 1.0 client logging in through the proxy   (make demo-clean)
#   make test        apt packages (when root) + pinned venv, then every test layer:
#                    lint, Python tests, molecule test on Debian 12 and 13, two federating
#                    servers, the role's lifecycle (upgrade, faults, removal)
#                    renewals against a local ACME server
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
# run a private Prosody on loopback; testssl.sh: its client simulations are the real device
# ClientHellos test_device_hellos.py replays; podman/runc/iptables/debootstrap: the test containers;
# libstrophe0 ... default-jdk-headless: the interop matrix's clients (docs/interop.md).
APT_PACKAGES := podman runc iptables debootstrap debian-archive-keyring prosody socat lua5.4 \
	testssl.sh openssl make python3 python3-venv ca-certificates git \
	libstrophe0 go-sendxmpp sendxmpp python3-nbxmpp default-jdk-headless
# Only for the measurements (peers in the benchmark); `make deps` run through these targets
# installs them too (target-specific variables reach the prerequisites).
bench bench-all bench-login bench-storm torture security: APT_PACKAGES += haproxy stunnel4

# The published demo ports (127.0.0.1 only). Change them if they are taken: make demo DEMO_PORT=...
DEMO_PORT ?= 15222
DEMO_DIRECT_TLS_PORT ?= 15223
export DEMO_PORT DEMO_DIRECT_TLS_PORT

BBPROXY_PYPROJECT := $(wildcard files/bbproxy/pyproject.toml)

.PHONY: help deps interop-deps venv clean-venv image image-trixie lint lint-yaml lint-ansible lint-python \
	lint-types lint-shell lint-role-docs lint-vault test-python molecule molecule-trixie molecule-federation molecule-lifecycle molecule-certbot molecule-adopt molecule-adopt-trixie test demo demo-clean bench \
	bench-all bench-login bench-storm torture security tlsfuzzer

help:
	@echo "make demo             provision a local container with site.yml and log in with TLS 1.0"
	@echo "make demo-clean       remove the demo container"
	@echo "make test             every layer below (what CI runs)"
	@echo "  make deps           apt packages (only when root and missing)"
	@echo "  make venv           .venv/ from requirements-dev.txt (+ files/bbproxy editable)"
	@echo "  make interop-deps   .interop/: the npm client of the interop matrix (pinned)"
	@echo "  make image          Debian 12 systemd image (cached by tag)"
	@echo "  make lint           yamllint, ansible-lint, ruff, mypy, shellcheck, role docs, vault example"
	@echo "  make test-python    pytest files/bbproxy/tests (and tools/tests if present)"
	@echo "  make molecule       molecule test: Debian 12 / Prosody 0.12"
	@echo "  make molecule-trixie  molecule test: Debian 13 / Prosody 13"
	@echo "  make molecule-federation  molecule test: two servers federating over s2s TLS"
	@echo "  make molecule-lifecycle   molecule test: upgrade, failed/killed runs, apt repair, state absent"
	@echo "  make molecule-certbot     molecule test: certbot issues and renews against a local ACME server"
	@echo "  make molecule-adopt       molecule test: adopting a hand-configured Prosody server"
	@echo "  make molecule-adopt-trixie  the same on Debian 13 / Prosody 13"
	@echo "make bench            benchmark vs same-run baselines, < 3 min (BENCH_ARGS=--full: < 20 min)"
	@echo "make bench-all        every headline ratio from one run: --full + logins + storm + resumption, < 20 min"
	@echo "make bench-login      whole TLS 1.0 logins: bbproxy->Prosody vs Prosody's TLS vs haproxy, < 5 min"
	@echo "make bench-storm      1 000 logged-in sessions reset at once and back, bbproxy vs haproxy, ~2 min"
	@echo "make torture          floods, hostile input, faults vs a real Prosody, < 10 min (TORTURE_ARGS=--short)"
	@echo "make security         testssl.sh policy check of a local proxy (docs/security.md), ~2 min"
	@echo "make tlsfuzzer        tlsfuzzer vs the proxy and openssl s_server, ~2 min (TLSFUZZER_DIR=checkout)"

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
# promtool checks the alert rules in docs/operating.md (test_expiry_alerts.py). It comes from Debian's
# prometheus package, unpacked here rather than installed: installing would also start a server.
PROMTOOL := $(INTEROP_NPM)/prometheus/usr/bin/promtool

$(PROMTOOL):
	@mkdir -p $(INTEROP_NPM)/prometheus
	cd $(INTEROP_NPM) && rm -f prometheus_*.deb && apt-get download prometheus \
	  && dpkg-deb -x prometheus_*.deb prometheus && rm -f prometheus_*.deb
	@test -x $@
interop-deps: $(INTEROP_NPM)/.xmppjs-$(XMPPJS_VERSION).stamp $(PROMTOOL)

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
PY_DIRS = $(wildcard files/bbproxy tools molecule/shared/tests molecule/federation/tests molecule/adopt/tests molecule/lifecycle molecule/certbot scripts bench)
SHELL_FILES = .ci/run $(shell git ls-files --cached --others --exclude-standard -- '*.sh' | sort -u)

# Every linter runs (-k) even when an earlier one fails, so one run shows every finding.
lint: venv
	@$(MAKE) -k lint-yaml lint-ansible lint-python lint-types lint-shell lint-role-docs lint-vault

lint-yaml:
	@echo "--- yamllint"
	$(BIN)/yamllint $(YAML_FILES)

# molecule/shared/converge_collection.yml imports bbproxy.xmpp.site: ansible-lint's syntax check
# finds it in the collection built from this checkout and installed (offline) under .molecule-state/.
LINT_COLLECTIONS := $(CURDIR)/.molecule-state/lint-collections
lint-ansible:
	@echo "--- ansible-lint"
	@molecule/shared/install_collection.sh tarball $(LINT_COLLECTIONS) >/dev/null
	ANSIBLE_COLLECTIONS_PATH=$(LINT_COLLECTIONS) $(BIN)/ansible-lint

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

# The example inventory's ansible-vault file still decrypts with the documented example password
# and every account password in it comes from the vault (docs/operating.md).
lint-vault:
	@echo "--- vault example (tools/check_vault_example.py)"
	$(BIN)/python tools/check_vault_example.py

lint-types:
	@if [ -d files/bbproxy/src ]; then \
	  echo "--- mypy (files/bbproxy/src)"; \
	  cd files/bbproxy && $(BIN)/mypy src; \
	fi

test-python: venv interop-deps
	$(call pytest_layer,bbproxy,required,files/bbproxy/tests)
	$(call pytest_layer,tools,optional,tools/tests)

# Molecule's own state (its "ephemeral directory": state.yml, the inventory, a copy of molecule.yml)
# lives in this checkout, one directory per scenario. Molecule's default, ~/.ansible/tmp/molecule.
# <hash of the checkout's directory NAME>.<scenario>, is shared by every checkout of the same name on
# the machine: when two runs overlap, one run's clean-up deletes the other's molecule.yml in the
# middle of a playbook (issue 22; docs/testing.md "Runs that share a machine"). The containers'
# names are the machine's too, so one checkout at a time runs a scenario: the others wait for the lock.
MOLECULE_STATE := $(CURDIR)/.molecule-state
MOLECULE_LOCK ?= $(or $(wildcard /run/lock),/tmp)/bbproxy-molecule.lock
MOLECULE_LOCK_WAIT ?= 3600
#   $(call molecule_test,SCENARIO)
define molecule_test
	@mkdir -p $(MOLECULE_STATE)/$(1)
	@echo "molecule: scenario $(1), state in $(MOLECULE_STATE)/$(1), machine lock $(MOLECULE_LOCK)"
	@MOLECULE_EPHEMERAL_DIRECTORY=$(MOLECULE_STATE)/$(1) \
	  flock --wait $(MOLECULE_LOCK_WAIT) --conflict-exit-code 75 $(MOLECULE_LOCK) $(BIN)/molecule test -s $(1) \
	  || { rc=$$?; [ $$rc -ne 75 ] || echo "molecule: another checkout held $(MOLECULE_LOCK) for $(MOLECULE_LOCK_WAIT)s" >&2; exit $$rc; }
endef

# molecule test = destroy, syntax, create, check, converge, idempotence, verify, destroy. The first
# destroy removes a container of the scenario's name that an earlier, killed run left behind.
molecule: venv image
	$(call molecule_test,default)

molecule-trixie: venv image-trixie
	$(call molecule_test,trixie)

# Two Debian 12 servers federating over s2s TLS in backend_secure mode (and the disabled mode
# failing); Debian 13: BBPROXY_FEDERATION_SUITE=trixie (make image-trixie first).
molecule-federation: venv image
	$(call molecule_test,federation)

# The role's lifecycle on Debian 12: upgrade from an older build, re-runs after a failed run, a
# killed run and an interrupted apt, bbproxy_state absent (Prosody on its own TLS), reinstall.
molecule-lifecycle: venv image
	$(call molecule_test,lifecycle)

# Certificates renewed for real on Debian 12: certbot against Debian's pebble (a test ACME server)
# in the container, renewals with Prosody's import as a hook file and as a stored --deploy-hook,
# the proxy serving each new certificate with live sessions kept, a missing source in the journal.
molecule-certbot: venv image
	$(call molecule_test,certbot)

# Adopting a Prosody server configured by hand (two VirtualHosts, MUC, http_file_share, accounts,
# a roster, its own TLS) with bbproxy_prosody_adopt "carry_over"; later runs and the refusals.
# About 7 min: not in TEST_LAYERS (docs/testing.md).
molecule-adopt: venv image
	$(call molecule_test,adopt)

# The same configuration adopted on Debian 13 (Prosody 13 loads it with its own, newer parser).
molecule-adopt-trixie: export BBPROXY_ADOPT_SUITE = trixie
molecule-adopt-trixie: venv image-trixie
	$(call molecule_test,adopt)

# Every layer runs even when an earlier one fails, so one CI run shows every failure; the
# summary at the end says which failed and how long each took. Debian 13 adds about 8 minutes,
# the two-server federation scenario about 10; skip them locally with:
# make test TEST_LAYERS="lint test-python molecule"
# molecule-certbot (about 5 min) and molecule-adopt (about 7) are not in it: with them the run of
# 2026-12-06 took 57 min, against a budget of well under 60 (docs/testing.md, Timings).
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

# Every headline ratio from one run (README): the full benchmark with the resumed handshakes, then
# login.py and storm.py, folded into one report; the run the README quotes is kept in bench/reports/.
BENCH_ALL_ARGS ?= --out bench/results
bench-all: deps venv
	$(BIN)/python bench/run.py --full --loop uvloop --with login,storm $(BENCH_ALL_ARGS)

# Whole logins through a real Prosody and the reconnect storm (issue 19; bench/README.md).
LOGIN_ARGS ?=
bench-login: deps venv
	$(BIN)/python bench/login.py $(LOGIN_ARGS)

STORM_ARGS ?=
bench-storm: deps venv
	$(BIN)/python bench/storm.py $(STORM_ARGS)

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

# tlsfuzzer (issue 16): ~45 of its scripts against the proxy's direct-TLS listener and against
# openssl s_server set up the same way; fails on any case that fails only through the proxy.
# tlsfuzzer is not on PyPI: TLSFUZZER_DIR is a checkout; its tlslite-ng goes into its own venv.
TLSFUZZER_DIR ?=
TLSFUZZER_VENV ?= $(CURDIR)/.venv-tlsfuzzer
TLSFUZZER_ARGS ?=
tlsfuzzer: venv
	@if [ -z "$(TLSFUZZER_DIR)" ] || [ ! -f "$(TLSFUZZER_DIR)/scripts/test-conversation.py" ]; then \
	  echo "tlsfuzzer: needs a checkout (it is not on PyPI):" >&2; \
	  echo "  git clone https://github.com/tlsfuzzer/tlsfuzzer /path/to/tlsfuzzer" >&2; \
	  echo "  make tlsfuzzer TLSFUZZER_DIR=/path/to/tlsfuzzer" >&2; exit 2; \
	fi
	@test -x $(TLSFUZZER_VENV)/bin/python || $(PYTHON) -m venv $(TLSFUZZER_VENV)
	@$(TLSFUZZER_VENV)/bin/python -c 'import tlslite, ecdsa' 2>/dev/null \
	  || $(TLSFUZZER_VENV)/bin/python -m pip install --quiet 'tlslite-ng==0.9.0b2' ecdsa
	$(BIN)/python bench/tlsfuzzer.py --tlsfuzzer-dir "$(TLSFUZZER_DIR)" \
	  --python $(TLSFUZZER_VENV)/bin/python $(TLSFUZZER_ARGS)
