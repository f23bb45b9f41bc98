"""The per-worker model cache: a model is loaded once per worker process, not shipped with tasks."""

from __future__ import annotations

import logging
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["ModelCache", "cached_model"]

log = logging.getLogger(__name__)


class ModelCache(WorkerPlugin):
    """Holds loaded models of one worker (or of the client process when run without one).

    Registered on every worker as a ``WorkerPlugin`` (``client.register_plugin``), so
    ``teardown`` frees the models when a worker closes.
    """

    name = "radflow-model-cache"

    def __init__(self) -> None:
        self.worker: Any = None
        self.models: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # shipped empty to each worker
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, worker: Any) -> None:  # WorkerPlugin API
        self.worker = worker

    def teardown(self, worker: Any) -> None:  # WorkerPlugin API
        for model in self.models.values():
            model.runner.shutdown(wait=False)
        self.models.clear()

    def get(self, spec: Any) -> Any:
        from radflow.models.loading import load_model

        with self.lock:
            model = self.models.get(spec.key)
            if model is None:
                model = load_model(spec)
                _to_device(model)
                model.runner = _runner(_worker_threads(self.worker))
                model.feeding = threading.Lock()  # one task at a time feeds the runner (radflow.stages.infer)
                self.models[spec.key] = model
                log.info("loaded model %s (%s, sha256 %s)", model.card.name, model.kind, model.sha256[:12])
            return model


def _runner(threads: int):
    """A one-thread executor for a model's forward passes.

    Forward passes run one at a time on one thread that owns the intra-op thread pool
    (OpenMP's thread count is per calling thread, and its warm-up is paid once), using
    all of the worker's threads, while the worker's task threads read and decode the
    next blocks.
    """
    from concurrent.futures import ThreadPoolExecutor

    def init() -> None:
        import torch

        torch.set_num_threads(threads)

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="radflow-infer", initializer=init)


def _worker_threads(worker: Any) -> int:
    """Threads of this Dask worker (its executor's size), or this process's cores without a worker."""
    import os

    state = getattr(worker, "state", None)
    n = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return int(n) if n else (os.cpu_count() or 1)


def _to_device(model: Any) -> None:
    """Move a torch module to this worker's GPU when it has one (channels-last if the card asks)."""
    import torch

    module = model.module
    model.device = "cpu"
    if not hasattr(module, "to"):
        return
    if torch.cuda.is_available():
        module.to("cuda")
        model.device = "cuda"
    if model.card.channels_last:
        module.to(memory_format=torch.channels_last)


_CLIENT_SIDE = ModelCache()


def cached_model(spec: Any) -> Any:
    """The loaded model for ``spec``: from this worker's plugin if any, else a process cache."""
    try:
        from distributed import get_worker

        worker = get_worker()
        plugin = worker.plugins.get(ModelCache.name)
    except (ImportError, ValueError):
        plugin = None
    return (plugin or _CLIENT_SIDE).get(spec)
