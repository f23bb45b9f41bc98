# The worker and scheduler image that `radflow k8s-spec` and RADFLOW_CLUSTER__KIND=kubernetes name by default
# (RADFLOW_CLUSTER__KUBERNETES__IMAGE). Build and push it under the name your cluster pulls:
#   docker build -t ghcr.io/radflow/radflow:latest . && docker push ghcr.io/radflow/radflow:latest
# GPU nodes: add the extra (pip install ".[gpu]") on a CUDA base image; the torch wheel below carries CUDA.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/radflow
# torch and torchvision first, pinned as in the Makefile; then radflow with its requirements
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY radflow ./radflow
RUN pip install --no-cache-dir . && python -c "import radflow, distributed, pydicom, zarr"
# the Dask operator runs `dask scheduler` / `dask worker …` in this image
CMD ["radflow", "info"]
