"""Generic worker plugins (the model cache lives in :mod:`radflow.models.cache`)."""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["RMMAllocators"]

log = logging.getLogger(__name__)


class RMMAllocators(WorkerPlugin):
    """Routes CuPy's and torch's device allocations through the worker's RMM pool (set up by
    dask-cuda from ``rmm_pool_size``), so both libraries share one pool instead of each caching
    its own share of the GPU. Runs before any task allocates (plugins run at worker start)."""

    name = "radflow-rmm-allocators"

    def setup(self, worker: Any) -> None:  # WorkerPlugin API
        try:
            import rmm  # noqa: F401
        except ImportError:
            log.warning("rmm is not installed: CuPy and torch keep their own allocators")
            return
        try:
            import cupy
            from rmm.allocators.cupy import rmm_cupy_allocator

            cupy.cuda.set_allocator(rmm_cupy_allocator)
        except ImportError:
            pass
        try:
            import torch
            from rmm.allocators.torch import rmm_torch_allocator

            torch.cuda.memory.change_current_allocator(rmm_torch_allocator)
        except (ImportError, RuntimeError) as exc:  # RuntimeError: torch already allocated on this device
            log.warning("torch keeps its own CUDA allocator (%s)", type(exc).__name__)
