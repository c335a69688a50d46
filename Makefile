# Two commands matter: `make book` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv book test unit chapters lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (lincollapse)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (done by book and test)

book: $(STAMP)  ## build the executed HTML book in _build/html (LINCOLLAPSE_PRESET=book)
	LINCOLLAPSE_PRESET=$${LINCOLLAPSE_PRESET:-book} $(BIN)/python -m tools.build_book

test: $(STAMP)  ## lint, unit tests, and every chapter re-executed under nbval (fast preset)
	$(BIN)/ruff check lincollapse tests tools
	$(BIN)/ruff format --check lincollapse tests tools
	LINCOLLAPSE_PRESET=fast $(BIN)/python -m pytest -n $(JOBS) --dist loadfile \
		--nbval-lax --nbval-current-env -p no:cacheprovider tests book

unit: $(STAMP)  ## unit tests only
	LINCOLLAPSE_PRESET=fast $(BIN)/python -m pytest -n $(JOBS) -p no:cacheprovider tests

chapters: $(STAMP)  ## chapters only, under nbval (fast preset)
	LINCOLLAPSE_PRESET=fast $(BIN)/python -m pytest -n $(JOBS) --dist loadfile \
		--nbval-lax --nbval-current-env -p no:cacheprovider book

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format lincollapse tests tools
	$(BIN)/ruff check --fix lincollapse tests tools

bench: $(STAMP)  ## print the benchmark tables
	$(BIN)/python -m lincollapse bench

.PHONY: browser-check binder-check pdf

browser-check: $(STAMP)  ## check every page of _build/html in headless Chromium (after make book)
	$(BIN)/python -m tools.browser_check _build/html

binder-check: $(STAMP)  ## every chapter run in JupyterLab on one core, from a fresh .binder env
	$(BIN)/python tools/binder_check.py

pdf: $(STAMP)  ## optional: the book as a PDF (needs pdflatex and latexmk; not part of CI)
	LINCOLLAPSE_PRESET=$${LINCOLLAPSE_PRESET:-book} $(BIN)/python -m tools.build_book --builder pdflatex

clean:  ## remove build outputs (keeps .venv and the results cache)
	rm -rf _build
