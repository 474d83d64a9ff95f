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
STAMP := $(VENV)/.installed
# `make test` leaves the slow end-to-end runs out (PYTEST_ARGS='-m slow' runs them, PYTEST_ARGS= all).
PYTEST_ARGS ?= -m "not slow"
# What the service needs from the system, as <command>:<Debian package>; installed when missing.
SYSTEM_COMMANDS := bwrap:bubblewrap
# The tests and benchmarks also drive Debian's Chromium (Playwright's own download is not used).
TEST_SYSTEM_COMMANDS := $(SYSTEM_COMMANDS) chromium:chromium
# Installs the Debian packages of the <command>:<package> pairs in $(1) whose command is missing.
install_missing = @missing=""; for pair in $(1); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair\#*:}"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

.PHONY: up test lint bench install tools system test-system clean

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

system:
	$(call install_missing,$(SYSTEM_COMMANDS))

test-system:
	$(call install_missing,$(TEST_SYSTEM_COMMANDS))

# exec: the service replaces the recipe's shell, so a supervisor's SIGTERM reaches it.
up: install tools system
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" exec $(BIN)/switchyard up

test: install tools test-system
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install tools test-system
	for b in bench/*.py; do PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(TOOLS) .switchyard
