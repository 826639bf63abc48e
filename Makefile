# Two commands set everything up on a fresh machine with only Python: `make demo` and `make test`.
# Both create .venv and install what they need, once (a stamp per pyproject.toml version).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On CPU-only machines torch==2.13.0 is a local CPU build; an unpinned torch pulls GBs of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: demo test lint install clean

$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.stamp

demo: $(VENV)/.stamp
	$(BIN)/blockfp8 check

lint: $(VENV)/.stamp
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
