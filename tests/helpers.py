"""Test helpers: optional-dependency markers, file snapshots and store comparisons."""

from __future__ import annotations

import functools
import hashlib
import os

#: the Dask configuration of a test's own LocalCluster whose workers are killed on purpose: a task fails
#: at the first death, and the cluster never closes a nanny whose worker is between two restarts
#: (``lost-worker-timeout``, as radflow's own local clusters do)
KILLING_CLUSTER = {"distributed.scheduler.allowed-failures": 0, "distributed.deploy.lost-worker-timeout": "1h"}


@functools.lru_cache(maxsize=1)
def has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None



def _content(files: list[str], dirpath: str, root: str) -> list[str]:
    """The store's content files: not the writer lock, whose holder record each writing run rewrites."""
    from radflow.store.lock import LOCK_NAME

    return [f for f in files if not (f == LOCK_NAME and dirpath == root)]


def tree_digest(root: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path → digest), the writer lock aside."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in _content(files, dirpath, root):
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tree_mtimes(root: str) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in _content(files, dirpath, root):
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.stat(p).st_mtime_ns
    return out


def write_batch_that_dies_in_company(store_url, plan, **kwargs):
    """``write_batch``, except that a batch holding an input named ``poison`` beside others kills its worker
    process (as an out-of-memory kill does); alone, or left out, it passes. Runs on Dask workers."""
    from radflow.ingest.batches import write_batch

    if len(plan.inputs) > 1 and any("poison" in i.uri for i in plan.inputs):
        os._exit(137)
    return write_batch(store_url, plan, **kwargs)


def content_apart_from_place(store: str) -> dict[str, object]:
    """What must agree between two ingests of the same instances from different places: every array,
    and every table without the columns that name the place (source) or the batch."""
    import radflow
    from radflow.store.tables import terminal_ledger

    digest = radflow.digest(store)
    out: dict[str, object] = {k: v for k, v in digest.items() if not k.startswith(("tables/", "attrs", "store"))}
    s = radflow.open_store(store)
    for name in ("instances", "headers"):
        df = s.table(name).drop(columns=["source", "batch", "seconds"], errors="ignore")
        out[name] = df.sort_values(list(df.columns[:3])).astype(str).reset_index(drop=True).to_dict("list")
    # (an archive reports no file size or version: the ledger keys its instances by their keyed UID)
    ledger = terminal_ledger(s.table("ledger")).drop(columns=["source", "batch", "seconds", "size", "version"])
    out["ledger"] = ledger.sort_values("sha256").astype(str).reset_index(drop=True).to_dict("list")
    return out
