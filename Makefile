# `make demo` and `make test` set everything up on a fresh machine (a local virtual environment in .venv).
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.neurosurvey-installed

.PHONY: demo test lint clean-warehouse

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/survey demo

test: $(STAMP)
	$(BIN)/ruff check survey jobs tests benchmarks
	$(BIN)/python -m pytest -q -n 2 -m "not ray"  # on both cores, but the tests that start a Ray cluster:
	$(BIN)/python -m pytest -q -m ray  # alone after (a busy CPU starves a cluster's start-up and job drivers)

lint: $(STAMP)
	$(BIN)/ruff check survey jobs tests benchmarks

clean-warehouse:
	rm -rf catalogs/warehouse
