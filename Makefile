# `make up` runs the service, `make test` runs the whole suite; each sets itself up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OPENCODE_VERSION := 1.18.33
TOOLS := .tools
OPENCODE := $(TOOLS)/node_modules/.bin/opencode
STAMP := $(VENV)/.installed
# What the service needs from the system, as <command>:<Debian package>; installed when missing.
SYSTEM_COMMANDS := bwrap:bubblewrap

.PHONY: up test lint bench install tools system clean

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

tools: $(OPENCODE)

system:
	@missing=""; for pair in $(SYSTEM_COMMANDS); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

up: install tools system
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/switchyard up

test: install tools system
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install tools system
	for b in bench/*.py; do PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(TOOLS) .switchyard
