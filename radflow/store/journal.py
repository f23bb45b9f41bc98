"""Where an ingest run's plan is recorded until its batches are done (the documents themselves are
:mod:`radflow.ingest.journal`'s).

* A versioned store (format 2): inside the transaction, as the node ``journal/<id>`` of the store's
  hierarchy (the document, zlib-compressed, as a ``uint8`` array). It is committed together with the
  reservations it describes (the run's first checkpoint), so a version holds a plan exactly when it
  holds that plan's reserved regions, and the run's own last version no longer holds it: resuming
  needs nothing beside the engine's state.
* A format-1 store: ``<store>/journal/<id>.json``, written atomically.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Iterable

from radflow.store.urls import filesystem, is_remote, join

__all__ = ["record", "documents", "remove", "move_into"]

GROUP = "journal"
_CHUNK = 8 << 20  # bytes per chunk of a document node


def _url(store_url: str, name: str = "") -> str:
    return join(store_url, GROUP, name) if name else join(store_url, GROUP)


def _session_root(store_url: str, *, write: bool):
    """The root group of the versioned store's session this thread writes through (``None``: none open)."""
    import zarr

    from radflow.store import versions

    session = versions.session_for(store_url, write=write)
    if session is None:
        return None
    return zarr.open_group(versions.RetryingStore(session.store), mode="a" if write else "r")


def record(store_url: str, doc_id: str, pieces: Iterable[bytes], storage_options: dict[str, Any] | None = None) -> None:
    """Record the document made of ``pieces`` (atomically: a torn document is never read)."""
    root = _session_root(store_url, write=True)
    if root is not None:
        _write_node(root, doc_id, pieces)
        return
    fs, path = filesystem(_url(store_url, f"{doc_id}.json"), storage_options)
    remote = is_remote(store_url)
    if not remote:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    target = path if remote else path + ".tmp"
    with fs.open(target, "wb") if remote else open(target, "wb") as fh:  # an object appears whole when closed
        for piece in pieces:
            fh.write(piece)
        if not remote:
            fh.flush()
            os.fsync(fh.fileno())
    if not remote:
        os.replace(target, path)


def _write_node(root, doc_id: str, pieces: Iterable[bytes]) -> None:
    import numpy as np

    packer = zlib.compressobj(1)  # compressed as it is made: the JSON itself is never whole in memory
    data = b"".join([*(packer.compress(p) for p in pieces), packer.flush()])
    arr = root.require_group(GROUP).create_array(doc_id, shape=(len(data),), chunks=(max(1, min(len(data), _CHUNK)),),
                                                 dtype="uint8", compressors=None, overwrite=True)
    arr.attrs["encoding"] = "json+zlib"
    arr[:] = np.frombuffer(data, dtype=np.uint8)


def documents(store_url: str, storage_options: dict[str, Any] | None = None) -> list[bytes]:
    """Every recorded document: in a versioned store, those this thread's session (else the newest
    version) holds."""
    import zarr

    from radflow.store import versions

    root = _session_root(store_url, write=False)
    if root is None and versions.is_versioned(store_url, storage_options):
        try:
            root = zarr.open_group(versions.RetryingStore(versions.readonly(store_url, storage_options).store), mode="r")
        except zarr.errors.GroupNotFoundError:  # a new repository: nothing written yet
            return []
    if root is not None:
        try:
            group = root[GROUP]
        except KeyError:
            return []
        return [zlib.decompress(arr[:].tobytes()) for _, arr in sorted(group.arrays())]
    return [data for _, data in _files(store_url, storage_options)]


def _files(store_url: str, storage_options: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    fs, path = filesystem(_url(store_url), storage_options)
    fs.invalidate_cache(path)
    try:
        names = sorted(p for p in fs.find(path) if p.endswith(".json"))
    except FileNotFoundError:
        return []
    return [(os.path.basename(n)[: -len(".json")], fs.cat_file(n)) for n in names]


def remove(store_url: str, doc_id: str, storage_options: dict[str, Any] | None = None) -> None:
    """The document is done with: a versioned store's session drops its node (committed with the run), a
    format-1 store's file is deleted."""
    root = _session_root(store_url, write=True)
    if root is not None:
        try:
            del root[f"{GROUP}/{doc_id}"]
            if not any(True for _ in root[GROUP].members()):
                del root[GROUP]
        except KeyError:
            pass
        return
    fs, path = filesystem(_url(store_url, f"{doc_id}.json"), storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    if not is_remote(store_url):
        try:
            os.rmdir(os.path.dirname(path))  # leave no empty folder behind
        except OSError:
            pass


def move_into(store_url: str, root, storage_options: dict[str, Any] | None = None) -> int:
    """Migration to format 2: a format-1 store's journal files become nodes of the new hierarchy ``root``
    (the files go with the rest of format 1); returns how many."""
    found = _files(store_url, storage_options)
    for doc_id, data in found:
        _write_node(root, doc_id, [data])
    return len(found)
