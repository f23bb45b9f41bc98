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
	# report; dcmtk decompresses the lossless corpus for the decoder cross-check; dcm2niix places slices;
	# Orthanc with its DICOMweb plugin is the archive the DICOMweb tests pull from (each test starts its own
	# on 127.0.0.1; policy-rc.d keeps the package from starting a system-wide one at install)
	{ command -v chromium && command -v dcmdjpeg && command -v dcm2niix && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } \
	  >/dev/null || { apt-get update -qq && \
	  own=0; [ -e /usr/sbin/policy-rc.d ] || { own=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium dcmtk dcm2niix orthanc orthanc-dicomweb >/dev/null; \
	  rc=$$?; [ $$own = 0 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; }

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
