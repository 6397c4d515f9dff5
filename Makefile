# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates/updates $(VENV) itself (re-installs only when pyproject.toml/constraints.txt change).
# Variables (override on the command line, e.g. `make venv PYTHON=python3.12 VENV=/tmp/venv`):
#   PYTHON         the interpreter that makes the venv: CPython 3.10-3.13 (docs/install.md)
#   VENV           where the virtual environment goes (default .venv)
#   TORCH_VERSION  the torch release installed first; equal to the torch pin in constraints.txt
#                  (tests/test_packaging.py checks)
#   TORCH_INDEX    the package index torch comes from: PyTorch's CPU-only wheels by default, so
#                  a fresh machine gets the ~200 MB CPU build (2.13.0+cpu) instead of PyPI's
#                  multi-GB CUDA one. Passed as --index-url to the torch line alone (with
#                  --no-deps: torch's own requirements come from PyPI in the next line), so pip
#                  never falls back to PyPI's CUDA torch when that index is unreachable; a wheel
#                  that pip's configuration finds on local disk (find-links in pip.conf or
#                  PIP_FIND_LINKS) stays a candidate and is used when the index cannot be reached.
#                  A CUDA index (e.g. https://download.pytorch.org/whl/cu126) gives a GPU build;
#                  empty (TORCH_INDEX=) leaves the choice to pip's configuration alone.
#   EXTRAS         the extras installed with the package
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
EXTRAS        ?= dev,sparse,text,app,browser
PYTEST_ARGS   ?=
PY            := $(VENV)/bin/python
STAMP         := $(VENV)/.installed

.PHONY: demo test test-all lint bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --no-deps -c constraints.txt \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/earthgen demo --out outputs

SOURCES := earthgen earthgen_base vae flows controls renderers apps tests benchmarks experiments

# lint (a few seconds, before the tests): ruff's rules (pyproject.toml [tool.ruff]: line length
# 100 included), ruff's formatting, and lint-imports: the import contracts of pyproject.toml
# ([tool.importlinter]): packages and earthgen's subpackages import only the layers below them,
# and no import cycles
test: lint
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/bench_world.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .import_linter_cache
