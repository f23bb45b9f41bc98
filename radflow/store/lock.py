"""One writer at a time: the store's writer lock.

Every command that writes a store (``ingest``, ``process``, ``compact``, and ``run`` and ``demo``
through them) holds the store's writer lock from before it reads what is already stored until its
last write. A second writer fails at once with :class:`~radflow.errors.StoreBusy`, naming the run
that holds the lock, so two runs never plan the same inputs into two places; or, with
``RADFLOW_WRITER_WAIT_S`` (seconds), it waits its turn (an ingest and a ``process`` started together:
the second starts when the first has committed). Readers never take it.

* Local stores: an ``flock`` on ``<store>/writer.lock``. The kernel releases it when the holding
  process ends, however it ends (a SIGKILL leaves no stale lock).
* Object stores: a lease object ``<store>/writer.lock`` created only if absent (S3's conditional
  ``PUT``, ``If-None-Match: *``), renewed every ``ttl/3`` seconds while the run lasts and deleted at
  its end. A killed run's lease expires after ``ttl`` seconds (default 120); the next run then takes
  it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

from radflow.errors import StoreBusy
from radflow.store.urls import filesystem, is_remote, join, normalize

__all__ = ["writer", "LOCK_NAME"]

LOCK_NAME = "writer.lock"

log = logging.getLogger(__name__)


def _holder(command: str, ttl_s: float) -> dict[str, Any]:
    now = time.time()
    return {"id": uuid.uuid4().hex, "command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "started": now, "expires": now + ttl_s}


def _describe(info: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"`radflow {info.get('command', '?')}` (pid {info.get('pid', '?')} on {info.get('host', '?')}, since {started})"


def _busy(url: str, info: dict[str, Any], extra: str = "") -> StoreBusy:
    return StoreBusy(f"{url} is being written by {_describe(info)}{extra}; a second writer would plan the same "
                     "inputs twice. Run this command when that run has ended (readers are not blocked).")


@contextlib.contextmanager
def writer(store_url: str, storage_options: dict[str, Any] | None = None, *, command: str = "",
           ttl_s: float = 120.0, wait_s: float | None = None) -> Iterator[None]:
    """Hold ``store_url``'s writer lock for the block. If another run holds it: :class:`StoreBusy` at
    once, or after waiting up to ``wait_s`` seconds for it (default: ``RADFLOW_WRITER_WAIT_S``, 0)."""
    url = normalize(store_url)
    if wait_s is None:
        wait_s = float(os.environ.get("RADFLOW_WRITER_WAIT_S") or 0)
    deadline = time.monotonic() + max(0.0, wait_s)
    said = False
    with contextlib.ExitStack() as held:
        while True:
            try:
                held.enter_context(_lease(url, storage_options, command, ttl_s) if is_remote(url)
                                   else _flock(url, command, ttl_s))
                break
            except StoreBusy as exc:
                if time.monotonic() >= deadline:
                    raise
                if not said:
                    log.warning("%s; waiting up to %.0f s for it", str(exc).split(";")[0], wait_s)
                    said = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        yield


@contextlib.contextmanager
def _flock(url: str, command: str, ttl_s: float) -> Iterator[None]:
    import fcntl

    _, root = filesystem(url)
    os.makedirs(root, exist_ok=True)
    fh = open(os.path.join(root, LOCK_NAME), "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                info = json.loads(fh.read() or "{}")
            except ValueError:
                info = {}
            raise _busy(url, info) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_holder(command, ttl_s)))
        fh.flush()
        _remove_temporaries(root)
        yield
    finally:
        fh.close()  # closing releases the lock


def _remove_temporaries(root: str) -> None:
    """Delete the temporary files of a killed writer's table writes (``tables/<name>/*.tmp``, written then
    renamed into place): only a writer makes them, and this process now is the only writer."""
    import glob

    for path in glob.glob(os.path.join(glob.escape(root), "tables", "*", "*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def _lease(url: str, storage_options: dict[str, Any] | None, command: str, ttl_s: float) -> Iterator[None]:
    fs, path = filesystem(join(url, LOCK_NAME), storage_options)
    me = _holder(command, ttl_s)
    if not _create(fs, path, me):
        try:
            info = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            info = {}
        except ValueError:
            info = {"expires": 0}
        if info and float(info.get("expires", 0)) > time.time():
            raise _busy(url, info, f", lease valid for {float(info['expires']) - time.time():.0f} s more")
        with contextlib.suppress(FileNotFoundError):  # an expired lease: its run was killed
            fs.rm(path)
        if not _create(fs, path, me):
            raise _busy(url, {"command": "another command", "started": time.time()})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            fs.pipe_file(path, json.dumps({**me, "expires": time.time() + ttl_s}).encode())

    beat = threading.Thread(target=renew, name="radflow-writer-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


def _create(fs, path: str, info: dict[str, Any]) -> bool:
    """Write the lease only if no object is there (False when one is)."""
    body = json.dumps(info).encode()
    try:
        fs.pipe_file(path, body, mode="create")
    except (FileExistsError, OSError) as exc:
        if isinstance(exc, FileExistsError) or "PreconditionFailed" in repr(exc) or "412" in str(exc):
            return False
        raise
    except TypeError:  # a filesystem without exclusive create: check, then write
        if fs.exists(path):
            return False
        fs.pipe_file(path, body)
    return True
