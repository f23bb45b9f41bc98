"""The plan journal: what an ingest run has reserved, so that a run killed at any point resumes
into exactly the store an uninterrupted run writes.

Before a run reserves array regions and index ranges for its batches, it records the whole plan
(:mod:`radflow.store.journal`: inside a versioned store's transaction, committed with the
reservations; a file beside a format-1 store). A later run finds unfinished plans there and re-runs
their batches that have no ledger part yet — same inputs, same regions, same indices, so the
same bytes — before it plans anything new; a plan whose batches are all done is removed. Batch
writes are idempotent (a batch owns its shard objects and part names), so a batch cut short by
the kill is simply written again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

from radflow.ingest.batches import BatchInput, BatchPlan
from radflow.store.tables import part_names
from radflow.store import journal as recorded

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


def _pieces(jid: str, plans: list[BatchPlan], lengths: dict[str, int], meta: dict[str, int]) -> Iterator[bytes]:
    """The plan's JSON one plan at a time: a whole plan as dicts would hold every planned input twice
    more in memory."""
    head = json.dumps({"id": jid, "lengths": lengths, "meta": meta}, sort_keys=True)
    yield head[:-1].encode() + b', "plans": ['
    for n, plan in enumerate(plans):
        yield (b", " if n else b"") + json.dumps(_plan_to_dict(plan), sort_keys=True).encode()
    yield b"]}"


def write_journal(store_url: str, plans: list[BatchPlan], lengths: dict[str, int], meta: dict[str, int],
                  storage_options: dict[str, Any] | None = None) -> Journal:
    """Record a plan before anything is reserved for it."""
    jid = hashlib.sha256("\0".join(p.batch_id for p in plans).encode()).hexdigest()[:16]
    recorded.record(store_url, jid, _pieces(jid, plans, lengths, meta), storage_options)
    return Journal(jid, tuple(plans), dict(lengths), dict(meta))


def pending_journals(store_url: str, storage_options: dict[str, Any] | None = None) -> list[Journal]:
    """Plans recorded by runs that did not finish (oldest reservation first)."""
    out = []
    for doc in recorded.documents(store_url, storage_options):
        d = json.loads(doc)
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
    recorded.remove(store_url, journal.id, storage_options)


def completed_batches(store_url: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Batch ids whose ledger part exists, on its own or compacted (a batch writes its ledger part last)."""
    return part_names(store_url, "ledger", storage_options)
