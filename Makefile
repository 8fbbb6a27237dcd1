# One entry point for people and CI. Every target installs what it needs by itself.
PYTHON ?= python3

# As root, `thinkube hub` runs each server (and each GPU job) as its person's own account,
# which must be able to run the environment and import the package (the jobs client). In a
# checkout other users cannot reach (under /root, or a `mktemp -d` folder) the environments
# live in /opt/thinkube-hub/envs/<checkout>/ instead, .venv links there, and the package is
# installed as a copy, installed again whenever its files change.
CHECKOUT_CLOSED := $(shell [ "$$(id -u)" = 0 ] && $(PYTHON) -c 'import sys; \
	sys.path.insert(0, "."); from thinkube_core.accounts import folder_closed_to_others; \
	print(folder_closed_to_others(".") or "")' 2>/dev/null)
ifneq ($(CHECKOUT_CLOSED),)
ENVS ?= /opt/thinkube-hub/envs/$(notdir $(CURDIR))-$(shell printf %s '$(CURDIR)' | sha256sum | cut -c1-10)
VENV ?= $(ENVS)/venv
JH55_VENV ?= $(ENVS)/venv-jh55
EDITABLE :=
PACKAGE_FILES := pyproject.toml $(shell find thinkube_core thinkube_spawner hub_service thinkube_train -type f \
	-not -path '*/__pycache__/*')
$(info make: $(CHECKOUT_CLOSED): as root, people's accounts run the environment, so it is $(VENV))
else
EDITABLE := -e
endif
VENV ?= .venv
JH55_VENV ?= .venv-jh55
PY := $(VENV)/bin/python
# The hub starts the real configurable-http-proxy from node_modules/.bin.
export PATH := $(CURDIR)/node_modules/.bin:$(abspath $(VENV))/bin:$(PATH)

PYTEST_ARGS ?=

.PHONY: help deps test test-jh55 lint run dev clean

help:
	@echo "make run   - run thinkube-hub on this machine (http://127.0.0.1:8000/, password printed)"
	@echo "make test  - install everything and run the test suite"
	@echo "make test-jh55 - the end-to-end tests on JupyterHub 5.5"
	@echo "make lint  - ruff"
	@echo "make dev   - a real hub + the availability service against kubesim (address printed)"

# As root, `thinkube hub` runs each server as its person's own account, which must be able
# to run the venv's Python: one under a folder closed to other users (pyenv in /root) is
# replaced by the system's python3. $(call make-venv,DIR) makes the venv DIR.
VENV_PYTHON_CHECK := import sys; sys.path.insert(0, "."); \
	from thinkube_core.accounts import closed_to_others as closed; \
	why = closed(sys.executable); print(why or "", end=""); sys.exit(bool(why))
define make-venv
	@python='$(PYTHON)'; \
	if [ "$$(id -u)" = 0 ] && ! why=$$($$python -c '$(VENV_PYTHON_CHECK)'); then \
		if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
			&& /usr/bin/python3 -c '$(VENV_PYTHON_CHECK)' >/dev/null; then \
			echo "make: the venv uses /usr/bin/python3: other accounts cannot run $(PYTHON) ($$why)"; \
			python=/usr/bin/python3; \
		else \
			echo "make: as root, servers run as people's own accounts, which cannot run $(PYTHON) ($$why); give a Python 3.11+ they can run: make PYTHON=/path/to/python3 ..." >&2; \
			exit 1; \
		fi; \
	fi; \
	echo "$$python -m venv $(1)"; \
	if [ "$(1)" != "$(notdir $(1))" ]; then (umask 022; mkdir -p $(dir $(1))); fi; \
	$$python -m venv $(1)
	@if [ "$(1)" = "$(VENV)" ] && [ "$(VENV)" != .venv ] && { [ -L .venv ] || [ ! -e .venv ]; }; \
		then ln -sfn $(VENV) .venv; fi
endef

# The package as a copy (EDITABLE empty): installed again when its files change.
%/.package: $(PACKAGE_FILES)
	$*/bin/python -m pip install --quiet --no-deps --force-reinstall .
	touch $@
PACKAGE_COPY = $(if $(EDITABLE),,$(1)/.package)

$(PY):
	$(call make-venv,$(VENV))
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the package metadata changes. torch is pinned to the CPU build this
# machine image carries (the notebooks' LoRA test); an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[test,notebooks]' 'torch==2.13.0'
	touch $@ $(call PACKAGE_COPY,$(VENV))

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

deps: $(VENV)/.installed $(call PACKAGE_COPY,$(VENV)) node_modules/.installed

# The browser test (tests/e2e/test_browser.py) drives Debian's chromium through Playwright's
# bundled driver; `playwright install` would download browsers, which this network refuses.
/usr/bin/chromium:
	@$$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: deps /usr/bin/chromium lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The end-to-end tests again on JupyterHub 5.5, the version Zero to JupyterHub ships.
E2E_TESTS ?= tests/e2e tests/service tests/deploy/test_keycloak_login.py \
	tests/runpod/test_spawner_hub.py tests/runpod/test_thinkube_cloud.py tests/local

$(JH55_VENV)/.installed: pyproject.toml
	$(call make-venv,$(JH55_VENV))
	$(JH55_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(JH55_VENV)/bin/python -m pip install --quiet $(EDITABLE) '.[test]' 'jupyterhub==5.5.0'
	touch $@ $(call PACKAGE_COPY,$(JH55_VENV))

test-jh55: $(JH55_VENV)/.installed $(call PACKAGE_COPY,$(JH55_VENV)) node_modules/.installed
	$(JH55_VENV)/bin/python -m pytest $(E2E_TESTS) $(PYTEST_ARGS)

# `make run`: thinkube-hub on this machine (`thinkube hub`, docs/local.md): JupyterHub with
# the spawn form, this machine's live CPUs, memory and GPUs, servers pinned to what they
# chose. It needs the package with its `local` extra (JupyterLab for the servers) and
# configurable-http-proxy, not the test tools.
# RUN_ARGS passes options, e.g. make run RUN_ARGS="--port 8080 --ip 0.0.0.0".
RUN_ARGS ?=
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[local]'
	touch $@ $(call PACKAGE_COPY,$(VENV))

run: $(VENV)/.run-installed $(call PACKAGE_COPY,$(VENV)) node_modules/.installed
	$(VENV)/bin/thinkube hub $(RUN_ARGS)

# A real JupyterHub with thinkube-resources as a managed service, against kubesim started
# alongside (20 nodes, 6 with GPUs, 300 pods): examples/kubesim/dev.py. Log in with any name;
# Ctrl-C stops the hub, then kubesim. It needs the package with its `local` extra (the
# servers kubesim runs) and `dev` extra (what kubesim imports), not the test tools. State in
# .dev/ (or DEV_DIR), the hub on port 8000 when free (or DEV_ARGS="--port N"), internal
# ports free ones: two checkouts can run it side by side.
DEV_DIR ?=
DEV_ARGS ?=
$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[local,dev]'
	touch $@ $(call PACKAGE_COPY,$(VENV))

dev: $(VENV)/.dev-installed $(call PACKAGE_COPY,$(VENV)) node_modules/.installed
	$(PY) examples/kubesim/dev.py $(if $(DEV_DIR),--state-dir $(DEV_DIR)) $(DEV_ARGS)

clean:
	rm -rf $(VENV) $(JH55_VENV) .venv node_modules test-artifacts .pytest_cache .ruff_cache .dev
