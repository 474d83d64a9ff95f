# `make up` runs the service, `make test` runs the whole suite; each sets itself up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OPENCODE_VERSION := 1.18.33
TOOLS := .tools
OPENCODE := $(TOOLS)/node_modules/.bin/opencode
# The review page's diff view, served by the gateway from .tools (no CDN).
DIFF2HTML_VERSION := 3.4.56
HIGHLIGHTJS_VERSION := 11.12.0
WEB_VENDOR := $(TOOLS)/.web-vendor-$(DIFF2HTML_VERSION)-$(HIGHLIGHTJS_VERSION)
# The browser the page's tests and bench/web.py drive (Playwright's own download is not used).
CHROMIUM := /usr/bin/chromium
STAMP := $(VENV)/.installed

.PHONY: up test lint bench install tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

$(OPENCODE):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error opencode-ai@$(OPENCODE_VERSION)
	$(OPENCODE) --version

$(WEB_VENDOR): | $(OPENCODE)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error --save-exact \
		diff2html@$(DIFF2HTML_VERSION) highlight.js@$(HIGHLIGHTJS_VERSION)
	touch $@

tools: $(OPENCODE) $(WEB_VENDOR)

$(CHROMIUM):
	apt-get update
	apt-get install -y chromium

# exec: the service replaces the recipe's shell, so a supervisor's SIGTERM reaches it.
up: install tools
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" exec $(BIN)/switchyard up

test: install tools $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install tools $(CHROMIUM)
	for b in bench/*.py; do PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(TOOLS) .switchyard
