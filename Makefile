# One entry point for people and CI. Every target installs what it needs by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The hub starts the real configurable-http-proxy from node_modules/.bin.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

PYTEST_ARGS ?=

.PHONY: help deps test test-jh55 lint run dev clean

help:
	@echo "make run   - run thinkube-hub"
	@echo "make test  - install everything and run the test suite"
	@echo "make test-jh55 - the end-to-end tests on JupyterHub 5.5"
	@echo "make lint  - ruff"
	@echo "make dev   - a real hub + the availability service against kubesim"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the package metadata changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: $(VENV)/.installed node_modules/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The end-to-end tests again on JupyterHub 5.5, the version Zero to JupyterHub ships.
JH55_VENV := .venv-jh55
E2E_TESTS ?= tests/e2e

$(JH55_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(JH55_VENV)
	$(JH55_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(JH55_VENV)/bin/python -m pip install --quiet -e '.[test]' 'jupyterhub==5.5.0'
	touch $@

test-jh55: $(JH55_VENV)/.installed node_modules/.installed
	$(JH55_VENV)/bin/python -m pytest $(E2E_TESTS) $(PYTEST_ARGS)

run: deps
	@echo "make run: the single-machine hub ('thinkube hub') arrives with the single-machine issue."
	@echo "Until then, 'make dev' runs a real hub against the Kubernetes emulator."

clean:
	rm -rf $(VENV) $(JH55_VENV) node_modules test-artifacts .pytest_cache .ruff_cache
