# medseg: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# torch is pinned: here a CPU build from local disk; elsewhere pip fetches the matching build.
TORCH   = torch==2.13.0

.PHONY: demo test lint venv venv-dev bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base pyproject.toml
	$(PIP) install -q $(TORCH) -e '.[dev]'
	touch $@

$(VENV)/.wsi: $(VENV)/.base
	$(PIP) install -q $(TORCH) -e '.[wsi]'
	touch $@

venv: $(VENV)/.base
venv-dev: $(VENV)/.dev

demo: $(VENV)/.wsi
	$(VENV)/bin/medseg run configs/demo.yaml --set output=out/demo
	$(VENV)/bin/medseg wsi predict --model data_samples/wsi/demo_bundle --input data_samples/wsi --output out/demo_wsi

test: $(VENV)/.dev
	$(VENV)/bin/ruff check medseg tests benchmarks
	$(VENV)/bin/mypy medseg
	$(PY) -m pytest -n 2 --dist loadfile tests

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check medseg tests benchmarks
	$(VENV)/bin/mypy medseg

bench: $(VENV)/.dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) out .ruff_cache .mypy_cache
