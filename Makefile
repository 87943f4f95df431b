# Set-up and entry points. `make demo` and `make test` create the virtual environment on first use.
# GPU users: install the CUDA build of torch into .venv first (see README), then run these as usual.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_SECONDS ?= 60
DEMO_ARGS ?=

.PHONY: demo test test-all bench venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

demo: venv
	$(PY) run_stream.py --config demo --duration $(DEMO_SECONDS) $(DEMO_ARGS)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

bench: venv
	$(PY) -m streamfuse bench fuse
	$(PY) -m streamfuse bench transport
