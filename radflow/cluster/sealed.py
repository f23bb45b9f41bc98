"""Tasks whose call the scheduler does not open.

Dask's scheduler unpickles every task it is sent. A task whose function or arguments live in
radflow's stage, store or ingest modules has the scheduler import them (with zarr, pyarrow,
pandas, icechunk …) at the first one, on the run's critical path, and unpickle each task's
arguments (a batch's plan, a write transaction's fork) again and again. :func:`submit` seals the
call (function, arguments, keyword arguments) into one ``bytes`` argument of :func:`_unseal`, a
function of this module, which imports nothing more: the worker opens it. The task keeps the
name Dask would give it (``write_batch-…``), so the dashboard reads as before. Measured with
``radflow process --steps preprocess,features`` on 200 radiographs: the cluster process (the
scheduler and the nanny) peaked at 183 MB when it opened the tasks, 89 MB sealed; the command's
whole process tree at 899 MB, 790 MB sealed (``benchmarks/process.py``, median of two).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable

__all__ = ["import_all", "submit", "task_name"]

#: ``Client.submit``'s own keyword arguments (everything else is the function's)
DASK_OPTIONS = ("key", "workers", "resources", "retries", "priority", "allow_other_workers", "fifo_timeout",
                "actor", "actors", "pure")


def task_name(fn: Callable[..., Any]) -> str:
    """The name a task of ``fn`` is known by: its ``__name__`` (a wrapper may carry the name of what it
    wraps), else what Dask would call it."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    from dask.utils import funcname

    return funcname(fn)


_OPENING = threading.Lock()


def import_all(names: tuple[str, ...]) -> int:
    """Import ``names`` (a worker's warm-up task), never while a call is being opened on another thread."""
    import importlib

    with _OPENING:
        for name in names:
            importlib.import_module(name)
    return len(names)


def _unseal(sealed: bytes) -> Any:
    import pickle

    # one at a time, and not during a warm-up's imports: opening a call imports its modules, and two threads
    # of a worker importing the same modules at once can each find the other's half-initialised
    with _OPENING:
        fn, args, kwargs = pickle.loads(sealed)
    return fn(*args, **kwargs)


def submit(client, fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """``client.submit(fn, *args, **kwargs)`` with the call sealed from the scheduler; Dask's own
    options (``key``, ``workers``, ``resources``, ``retries`` …) are taken out of ``kwargs`` as
    ``Client.submit`` takes them. Every submission is a task of its own (never ``pure``): without a
    ``key`` it gets ``<name>-<random hex>``."""
    import cloudpickle

    options = {k: kwargs.pop(k) for k in DASK_OPTIONS if k in kwargs}
    options.pop("pure", None)
    options.setdefault("key", f"{task_name(fn)}-{uuid.uuid4().hex}")
    return client.submit(_unseal, cloudpickle.dumps((fn, args, kwargs)), pure=False, **options)
