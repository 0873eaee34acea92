# Two entry points for a fresh clone:  `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panseg-installed
# Triton Inference Server for the serving tests: unpacked from the nvidia-pytriton wheel with its Python 3.11
# execution environment (runtime/serving/server.py). The tests look for it here.
TRITON_DIR := $(VENV)/triton
TRITON_STAMP := $(TRITON_DIR)/.panseg-ready
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test lint clean

setup: $(STAMP) $(TRITON_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,export,bench,dev,serve]'
	# Reference implementation for the PQ tests; it pins numpy<2, which we do not want: no deps.
	$(PY) -m pip install --quiet --no-deps panopticapi-lite
	touch $(STAMP)

# Serving: Debian's python3.11 (Triton's stub links its libpython) only if missing, then the server (skipped when
# already there). A failure leaves no stamp (the next run retries) and does not stop the tests: they skip the
# server tests and say why.
$(TRITON_STAMP): $(STAMP)
	@if [ ! -x /usr/bin/python3.11 ] || [ ! -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3.11 python3.11-venv libpython3.11; \
	fi; \
	if PANSEG_TRITON_DIR=$(TRITON_DIR) $(PY) -m runtime serve --install-only; then touch $(TRITON_STAMP); \
	else echo "make setup: Triton server not installed; the serving tests will be skipped"; fi

demo: $(STAMP)
	$(PY) -m benchmarks.demo $(ARGS)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo data
