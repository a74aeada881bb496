# ipamd: developer entry points (README "Quick start").
#
#   make demo    Debian packages + .venv, then scripts/demo.sh (needs root: namespace and bridge)
#   make test    Debian packages + .venv, then all three test tiers (unit, integration, e2e; e2e needs root)
#   make venv    .venv from the system python3, with `pip install -e '.[dev]'` (which also compiles the native CNI
#                plugin into ipamd/_bin/ when a C compiler is there)
#   make deps    as root: apt-get install the Debian packages that are missing; otherwise name them and stop
#   make lint    mypy --strict and ruff, as configured in pyproject.toml
#   make bench   bench/run.py (the CNI plugins) and bench/core.py (the allocation core)

PYTHON ?= python3
VENV   := .venv
# Written after a successful install; the install is redone when the project's build inputs change.
STAMP  := $(VENV)/.ipamd-installed

.PHONY: all venv deps deps-optional demo test lint bench

all: test

venv:
	@if [ ! -x $(VENV)/bin/python ]; then \
	    echo "venv: creating $(VENV) with $$(command -v $(PYTHON))"; \
	    $(PYTHON) -m venv $(VENV) || exit 1; \
	fi
	@if [ -f $(STAMP) ] && [ -z "$$(find pyproject.toml setup.py proto client/cni -newer $(STAMP) 2>/dev/null)" ] \
	    && ls ipamd/v1/*_pb2.py >/dev/null 2>&1; then \
	    echo "venv: $(VENV) is up to date (pip install -e '.[dev]' done before)"; \
	else \
	    echo "venv: pip install -e '.[dev]'"; \
	    $(VENV)/bin/python -m pip install --root-user-action=ignore -e '.[dev]' && touch $(STAMP); \
	fi

deps:
	@bash scripts/deps.sh

deps-optional:
	@bash scripts/deps.sh --optional

demo: deps venv
	@bash scripts/demo.sh

# Debian packages first: the venv's editable install compiles the native plugin when gcc is there.
# Without root, missing Debian packages only warn: the e2e tier skips itself (and the native plugin's runs, without a
# compiler), and the other tiers still run. pytest's exit status 5 (no test collected) fails like any other.
test: deps-optional venv
	@rc=0; $(VENV)/bin/pytest -q -rs -p no:cacheprovider tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

lint: venv
	@$(VENV)/bin/mypy && $(VENV)/bin/ruff check ipamd client tests bench

bench: venv
	@$(VENV)/bin/python bench/run.py && $(VENV)/bin/python bench/core.py
