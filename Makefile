# Two entry points for a fresh clone:  `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panseg-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,export,bench,dev]'
	# Reference implementation for the PQ tests; it pins numpy<2, which we do not want: no deps.
	$(PY) -m pip install --quiet --no-deps panopticapi-lite
	touch $(STAMP)

demo: setup
	$(PY) -m benchmarks.demo $(ARGS)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo data
