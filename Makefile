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
	# headless Chromium renders the QC report in its test (Debian's package; needs root)
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(PYTHON) -m radflow demo --out radflow-demo

test: setup browser
	$(PYTHON) -m pytest -q tests --nbmake notebooks

bench: setup
	$(PYTHON) benchmarks/ingest.py

clean:
	rm -rf radflow-demo .pytest_cache .hypothesis
