# Two commands on a fresh machine (each creates .venv when missing):
#   make demo   set up, then run the main job on the embedded default data
#               (ARGS='--size h100-20min' on one GPU, about 14 min on an H100 (measured 2026-12-06);
#               a default run on a GPU machine prints that hint)
#   make test   set up, then run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-gpu bench-cpu wheel clean

# Re-install when the dependency list changes. pip resolves torch 2.14.x (CUDA 13 build, runs on CPU too) and
# torchaudio 2.11 here; on a GPU image with torch 2.11 the same ranges are already satisfied.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m suite run --out runs/main $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# On a CUDA machine (see benchmarks/README.md for the device command): GPU tests, then the GPU benchmark.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(ARGS)

# The wheel a user installs, into .whl/ (benchmarks/run_device.sh scan installs it on the GPU machine: SSM_WHEEL).
wheel: $(STAMP)
	rm -rf .whl && $(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl .

bench-cpu: $(STAMP)
	$(PY) benchmarks/cpu_scan.py

clean:
	rm -rf $(VENV) runs .pytest_cache
