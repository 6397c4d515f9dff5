# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates/updates .venv itself (re-installs only when pyproject.toml/constraints.txt change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,sparse,text,app,browser
PYTEST_ARGS ?=

.PHONY: demo test test-all lint bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/earthgen demo --out outputs

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check earthgen vae flows controls renderers apps tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_world.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
