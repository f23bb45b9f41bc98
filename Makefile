# radflow — the two commands a fresh clone needs:
#   make demo   set everything up, then run the whole pipeline on a synthetic archive
#   make test   set everything up, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test bench clean

setup:
	# torch and torchvision first, pinned (CPU here; the same build runs CUDA where present)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e ".[dev]"

demo: setup
	$(PYTHON) -m radflow demo --out radflow-demo

test: setup
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) benchmarks/ingest.py

clean:
	rm -rf radflow-demo .pytest_cache .hypothesis
