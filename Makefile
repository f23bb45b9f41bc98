# radflow — the two commands a fresh clone needs:
#   make demo   set everything up, then run the whole pipeline on a synthetic archive
#   make test   set everything up, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup browser demo test bench clean

setup:
	# torch and torchvision first, pinned (CPU here; the same build runs CUDA where present)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e ".[dev]"

browser:
	# Debian tools the tests use as independent references (needs root): headless Chromium renders the QC
	# report; dcmtk decompresses the lossless corpus for the decoder cross-check; dcm2niix places slices
	{ command -v chromium && command -v dcmdjpeg && command -v dcm2niix; } >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium dcmtk dcm2niix >/dev/null; }

demo: setup
	$(PYTHON) -m radflow demo --out radflow-demo

test: setup browser
	# two test processes, a test file each at a time (-n 2 --dist loadfile): most tests wait on servers and
	# subprocesses, so two share the two cores; a file's module fixtures are built once
	$(PYTHON) -m pytest -q -n 2 --dist loadfile tests --nbmake notebooks

bench: setup
	$(PYTHON) benchmarks/ingest.py

clean:
	rm -rf radflow-demo .pytest_cache .hypothesis
