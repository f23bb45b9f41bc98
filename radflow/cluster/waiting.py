"""Waiting on Dask futures without waiting for ever.

A future waits while its cluster has no worker to run it: a nanny that cannot restart a worker
killed by a decoder, a cluster whose workers were all taken away. :func:`result` and
:func:`each_done` wait as long as work runs, and raise :class:`NoWorkers` once the cluster has
had no worker for ``patience_s`` seconds (``RADFLOW_NO_WORKERS_PATIENCE_S``, default 300),
so a run ends with an error that says so instead of hanging.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

__all__ = ["NoWorkers", "result", "each_done", "patience_s"]

_POLL_S = 2.0


class NoWorkers(RuntimeError):
    """The cluster has had no worker for longer than the patience allows."""


def patience_s() -> float:
    return float(os.environ.get("RADFLOW_NO_WORKERS_PATIENCE_S", "300"))


class _Watch:
    def __init__(self, client: Any, patience: float | None) -> None:
        self.client = client
        self.patience = patience_s() if patience is None else patience
        self.since: float | None = None

    def check(self) -> None:
        """Raise :class:`NoWorkers` when the cluster has been without workers for too long."""
        if self.client.nthreads():
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since > self.patience:
            raise NoWorkers(f"the Dask cluster at {self.client.scheduler.address} has had no worker for "
                            f"{self.patience:.0f} s (workers killed and not restarted?); stopping instead of "
                            "waiting for ever — the store is left as a crash leaves it: run the command again")


def result(fut: Any, *, patience: float | None = None) -> Any:
    """``fut.result()``; raises :class:`NoWorkers` if the cluster stays without workers."""
    watch = _Watch(fut.client, patience)
    while True:
        try:
            return fut.result(timeout=_POLL_S)
        except TimeoutError:
            watch.check()


def each_done(futures: Iterable[Any], *, patience: float | None = None) -> Iterator[Any]:
    """The futures as they finish (in any state, like ``distributed.as_completed``); raises
    :class:`NoWorkers` if the cluster stays without workers while some are still pending."""
    from distributed import as_completed

    futures = list(futures)
    if not futures:
        return
    watch = _Watch(futures[0].client, patience)
    done = as_completed(futures)
    checked = time.monotonic()
    while not done.is_empty():
        if done.has_ready():
            yield from done.next_batch(block=False)
            watch.since, checked = None, time.monotonic()
            continue
        time.sleep(0.05)
        if time.monotonic() - checked > _POLL_S:
            watch.check()
            checked = time.monotonic()
