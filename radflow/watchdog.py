"""Deadlines for work that may hang inside a decoder.

A thread stuck in a C decoder cannot be interrupted, so a deadline that passes ends the
whole worker process; its nanny starts a fresh one and the scheduler sees the task's
worker die. The ingest flow then probes the inputs one by one and records the one that
hangs as ``TIMEOUT`` (see :mod:`radflow.flows.ingest`).

Deadlines are enforced only in a Dask worker process that has a parent (a nanny, as in
``LocalCluster(processes=True)`` or ``dask worker``). Anywhere else — the flow process,
a test calling a batch function directly, threads of an in-process cluster — ending the
process would take the caller with it, so a deadline there is only logged.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["deadline", "EXIT_CODE"]

log = logging.getLogger(__name__)

EXIT_CODE = 75  # EX_TEMPFAIL: the nanny restarts the worker
_lock = threading.Lock()
_deadlines: dict[int, tuple[float, str]] = {}
_thread: threading.Thread | None = None


def _enforceable() -> bool:
    if multiprocessing.parent_process() is None:
        return False
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _watch() -> None:
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        with _lock:
            expired = [what for end, what in _deadlines.values() if now > end]
        if expired:
            msg = f"radflow: {expired[0]} passed its deadline; ending this worker process so its nanny restarts it"
            log.error(msg)
            for handler in logging.getLogger().handlers:  # os._exit skips the usual flushing
                handler.flush()
            sys.stderr.flush()
            os._exit(EXIT_CODE)


@contextlib.contextmanager
def deadline(seconds: float | None, what: str) -> Iterator[None]:
    """End this worker process if the block runs longer than ``seconds``.

    ``what`` names the work in the log line (never an identifying value: say
    "decoding one input", not its path). ``None`` or ``0`` disables the deadline.
    """
    global _thread
    if not seconds or not _enforceable():
        yield
        return
    me = threading.get_ident()
    with _lock:
        _deadlines[me] = (time.monotonic() + seconds, what)
        if _thread is None:
            _thread = threading.Thread(target=_watch, name="radflow-watchdog", daemon=True)
            _thread.start()
    try:
        yield
    finally:
        with _lock:
            _deadlines.pop(me, None)
