"""``radflow migrate``: a format-1 store (plain Zarr at the URL) becomes format 2 (versioned), in place.

Every Zarr object of the store (group and array metadata, every shard) is copied byte for byte into
a new Icechunk repository at ``<store>/repo``, the root attributes say format 2, and each table file
becomes a listed part; that is committed as the store's first version. Only then are the format-1
objects deleted, the root ``zarr.json`` first: until that moment the store reads as format 1, after it
as format 2. A migration that is killed is run again; it finishes what the first one began. The
Parquet files stay where they are (format 2 keeps them in the same folders); the plan of an ingest
that was killed moves into the new hierarchy, so the next ingest resumes it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from radflow.config import VERSION
from radflow.store.lock import LOCK_NAME, writer
from radflow.store.urls import filesystem, join, normalize, plain_store

__all__ = ["migrate"]

log = logging.getLogger(__name__)

_CONCURRENCY = 32


def _zarr_keys(keys: list[str]) -> list[str]:
    """The keys of a format-1 store's Zarr hierarchy (metadata and chunks; not tables, journal, lock, repo)."""
    skip = ("tables/", "journal/", "repo/", "reports/")
    return [k for k in keys if not k.startswith(skip) and k != LOCK_NAME
            and (k == "zarr.json" or k.endswith("/zarr.json") or "/c/" in k or k.startswith("c/"))]


def migrate(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Turn the format-1 store at ``url`` into a format-2 store; returns what was done
    (``objects`` copied, ``bytes``, ``table_parts`` listed, ``version``, ``seconds``)."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from radflow.errors import StoreNotFoundError
    from radflow.store import journal, layout, versions
    from radflow.store.tables import TABLES, _folder, _part_name, _register

    url = normalize(url)
    t0 = time.perf_counter()
    with writer(url, storage_options, command="migrate"):
        plain = versions._is_plain_zarr(url, storage_options)
        repo = versions.repository(url, storage_options)
        if not plain:
            if repo is None:
                raise StoreNotFoundError(f"no radflow store at {url}")
            return {"store": url, "already": True, "objects": 0, "bytes": 0, "table_parts": 0, "version": None}
        src = plain_store(url, storage_options, read_only=False)
        meta = layout._check(zarr.open_group(src, mode="r"))
        if meta.get("format_version") != 1:
            raise ValueError(f"{url}: format {meta.get('format_version')} cannot be migrated")

        async def listing() -> list[str]:
            return [k async for k in src.list()]

        keys = _zarr_keys(sync(listing()))
        done = repo is not None and any((s.metadata or {}).get("command") == "migrate" for s in versions._ancestry(repo))
        copied = nbytes = parts = 0
        version = None
        if not done:
            repo = versions.repository(url, storage_options, create=True)
            session = repo.writable_session(versions.BRANCH)
            dst = session.store
            copied, nbytes = sync(_copy(src, dst, keys, default_buffer_prototype()))
            root = zarr.open_group(dst, mode="r+")
            layout.update_meta(root, format_version=2, migrated_from=1)
            plans = journal.move_into(url, root, storage_options)  # an unfinished ingest resumes after the move
            fs, root_path = filesystem(join(url, "tables"), storage_options)
            found = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root_path, detail=False)] if fs.exists(root_path) else []
            for name in sorted(set(TABLES) | set(found)):
                root.require_group(f"tables/{name}")
                for file, _ in sorted(_folder(url, name, storage_options).items()):
                    base = file.rsplit("/", 1)[-1]
                    _register(dst, name, _part_name(base), base, -1)
                    parts += 1
            version = session.commit("migrate from format 1", metadata={
                "command": "migrate", "radflow_version": VERSION, "checkpoint": False,
                "summary": {"objects": copied, "bytes": nbytes, "table_parts": parts, "unfinished_plans": plans}})
        # the switch: without the root zarr.json the store reads as format 2
        fs, root_path = filesystem(url, storage_options)
        if "zarr.json" in keys:
            fs.rm_file(join(root_path, "zarr.json"))
        for key in keys:
            if key != "zarr.json":
                try:
                    fs.rm_file(join(root_path, key))
                except FileNotFoundError:
                    pass
        if fs.exists(join(root_path, journal.GROUP)):
            fs.rm(join(root_path, journal.GROUP), recursive=True)
        _remove_empty_folders(fs, root_path)
    log.info("%s: migrated to format 2 (%d objects, %.1f MB)", url, copied, nbytes / 1e6)
    return {"store": url, "already": False, "objects": copied, "bytes": nbytes, "table_parts": parts,
            "version": version, "seconds": time.perf_counter() - t0}


async def _copy(src, dst, keys: list[str], prototype) -> tuple[int, int]:
    import asyncio

    gate = asyncio.Semaphore(_CONCURRENCY)
    total = 0

    async def one(key: str) -> None:
        nonlocal total
        async with gate:
            buf = await src.get(key, prototype)
            if buf is not None:
                total += len(buf)
                await dst.set(key, buf)

    meta = sorted((k for k in keys if k.endswith("zarr.json")), key=lambda k: (k.count("/"), k))
    for key in meta:  # parents before children, arrays before their chunks
        await one(key)
    await asyncio.gather(*(one(k) for k in keys if not k.endswith("zarr.json")))
    return len(keys), total


def _remove_empty_folders(fs, root: str) -> None:
    """Local stores: the array folders the copied objects left empty."""
    import os

    if getattr(fs, "protocol", None) not in ("file", ("file", "local"), "local") or not os.path.isdir(root):
        return
    for here, dirs, files in os.walk(root, topdown=False):
        rel = os.path.relpath(here, root)
        if rel == "." or rel.split(os.sep)[0] in ("tables", "repo", "journal", "reports"):
            continue
        if not os.listdir(here):
            os.rmdir(here)
