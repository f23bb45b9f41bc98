"""The plan journal: what an ingest run has reserved, so that a run killed at any point resumes
into exactly the store an uninterrupted run writes.

Before a run reserves array regions and index ranges for its batches, it writes the whole plan
to ``<store>/journal/<plan id>.json``. A later run finds unfinished plans there and re-runs
their batches that have no ledger part yet — same inputs, same regions, same indices, so the
same bytes — before it plans anything new; a plan whose batches are all done is removed. Batch
writes are idempotent (a batch owns its shard objects and part names), so a batch cut short by
the kill is simply written again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from radflow.ingest.batches import BatchInput, BatchPlan
from radflow.store.tables import part_names
from radflow.store.urls import filesystem, is_remote, join

__all__ = ["Journal", "write_journal", "pending_journals", "with_uris", "remove_journal", "completed_batches"]


@dataclasses.dataclass(frozen=True)
class Journal:
    id: str
    plans: tuple[BatchPlan, ...]
    lengths: dict[str, int]  # array path → length after the plan's reservations
    meta: dict[str, int]  # root meta counters (next_index …) after the plan


def _plan_to_dict(p: BatchPlan) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    # an input whose path is recorded as a keyed hash keeps only that hash here too; the resuming
    # run finds its path again by discovering the source (see ``with_uris``)
    d["inputs"] = [{**dataclasses.asdict(i), "uri": "" if i.source else i.uri} for i in p.inputs]
    return d


def _plan_from_dict(d: dict[str, Any]) -> BatchPlan:
    d = dict(d)
    d["inputs"] = tuple(BatchInput(**i) for i in d["inputs"])
    d["shape"], d["ref_shape"] = tuple(d["shape"]), tuple(d["ref_shape"])
    return BatchPlan(**d)


def _url(store_url: str, name: str = "") -> str:
    return join(store_url, "journal", name) if name else join(store_url, "journal")


def write_journal(store_url: str, plans: list[BatchPlan], lengths: dict[str, int], meta: dict[str, int],
                  storage_options: dict[str, Any] | None = None) -> Journal:
    """Record a plan before anything is reserved for it (atomically: a torn write is never read)."""
    jid = hashlib.sha256("\0".join(p.batch_id for p in plans).encode()).hexdigest()[:16]
    fs, path = filesystem(_url(store_url, f"{jid}.json"), storage_options)
    remote = is_remote(store_url)
    if not remote:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    target = path if remote else path + ".tmp"
    with fs.open(target, "wb") if remote else open(target, "wb") as fh:  # an object appears whole when closed
        # one plan at a time: a whole plan as dicts would hold every planned input twice more in memory
        head = json.dumps({"id": jid, "lengths": lengths, "meta": meta}, sort_keys=True)
        fh.write(head[:-1].encode() + b', "plans": [')
        for n, plan in enumerate(plans):
            fh.write((b", " if n else b"") + json.dumps(_plan_to_dict(plan), sort_keys=True).encode())
        fh.write(b"]}")
        if not remote:
            fh.flush()
            os.fsync(fh.fileno())
    if not remote:
        os.replace(target, path)
    return Journal(jid, tuple(plans), dict(lengths), dict(meta))


def pending_journals(store_url: str, storage_options: dict[str, Any] | None = None) -> list[Journal]:
    """Plans recorded by runs that did not finish (oldest reservation first)."""
    fs, path = filesystem(_url(store_url), storage_options)
    fs.invalidate_cache(path)
    try:
        names = sorted(p for p in fs.find(path) if p.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        d = json.loads(fs.cat_file(name))
        out.append(Journal(d["id"], tuple(_plan_from_dict(p) for p in d["plans"]), d["lengths"], d["meta"]))
    return sorted(out, key=lambda j: min((p.index for p in j.plans), default=0))


def with_uris(journal: Journal, uris: dict[str, str]) -> Journal:
    """``journal`` with the paths of hashed inputs restored from ``uris`` (source label → URI, from
    discovering the source again); an input no longer found keeps its label as URI and is
    recorded as unreadable when its batch runs."""
    plans = tuple(dataclasses.replace(p, inputs=tuple(
        i if i.uri else dataclasses.replace(i, uri=uris.get(i.source, i.source)) for i in p.inputs)) for p in journal.plans)
    return dataclasses.replace(journal, plans=plans)


def remove_journal(store_url: str, journal: Journal, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(_url(store_url, f"{journal.id}.json"), storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    if not is_remote(store_url):
        try:
            os.rmdir(os.path.dirname(path))  # leave no empty folder behind
        except OSError:
            pass


def completed_batches(store_url: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Batch ids whose ledger part exists, on its own or compacted (a batch writes its ledger part last)."""
    return part_names(store_url, "ledger", storage_options)
