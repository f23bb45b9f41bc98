"""The ingest flow: discover → header index → plan batches → decode + write (on Dask).

Prefect sees a handful of steps plus one task per batch (one shard's worth of
inputs); Dask runs the per-batch work on the cluster's workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote  # large inputs: Prefect would visit every element

from radflow.cluster import connect, dashboard_link
from radflow.cluster.sealed import submit
from radflow.cluster.waiting import NoWorkers, each_done, result
from radflow.config import VERSION, Settings, key_fingerprint, resolve_secret_key
from radflow.errors import Reason
from radflow.flows._common import (build_settings, compact_tables, markdown_table, performance_report,
                                   publish_artifact, request_slots, run_logger)
from radflow.flows._flow import flow
from radflow.flows._progress import report
from radflow.store import layout, versions
from radflow.ingest.batches import PHASES, BatchInput, BatchPlan, ledger_row, lost_detail, plan_batches, probe_input, write_batch
from radflow.ingest.index import HeaderIndex, index_inputs
from radflow.dicom.deid import privacy_record
from radflow.ingest.journal import (Journal, completed_batches, pending_journals, remove_journal, with_uris,
                                    write_journal)
from radflow.dicom.pseudonym import source_label
from radflow.ingest.duplicates import check_duplicates, split_duplicates
from radflow.ingest.acquisitions import KINDS, reference_path
from radflow.ingest.dicomweb import is_dicomweb
from radflow.ingest.sources import InputRef, discover
from radflow.store.tables import LEDGER_SCHEMA, TRANSIENT_REASONS, part_names, read_arrow, write_part
from radflow.store.lock import writer
from radflow.store.urls import filesystem, normalize, zarr_store
from radflow.store.versions import transaction

__all__ = ["ingest_flow", "select_new", "summarize"]

#: held by a probe, and by a batch's runs after its probes: a probe that kills the worker on purpose must
#: not be taken for the death of another batch's careful re-run (which then blamed an innocent input)
_PROBE_LOCK = threading.RLock()


def _alone(client, fn, *args, timeout_s: float = 0.0, attempts: int = 2, **kwargs) -> tuple[str | None, Any]:
    """Run ``fn`` as the only probe in flight from this process.

    Returns ``(None, result)``, or ``(reason, None)`` if it killed its worker on every attempt
    (an input is blamed only when it dies again on its own): ``TIMEOUT`` when each death came
    after the input's deadline (the worker's watchdog ended it), else ``WORKER_LOST``.
    """
    from distributed.scheduler import KilledWorker

    slow = 0
    with _PROBE_LOCK:
        for _ in range(attempts):
            t0 = time.monotonic()
            try:
                return None, result(submit(client, fn, *args, **kwargs))
            except KilledWorker:
                slow += bool(timeout_s) and time.monotonic() - t0 >= timeout_s
    return (Reason.TIMEOUT.value if slow == attempts else Reason.WORKER_LOST.value), None


#: the ledger columns that decide what is new (not the checksums, details, anomalies ...)
OUTCOME_COLUMNS = ["source", "size", "version", "status", "reason"]


def read_outcomes(store: str, storage_options: dict[str, Any] | None) -> pa.Table | None:
    """The ledger columns :func:`select_new` needs, as Arrow (at MIMIC-CXR's count the whole ledger as
    Python objects held ~280 MB in the flow process)."""
    table = read_arrow(store, "ledger", storage_options, columns=OUTCOME_COLUMNS)
    pa.default_memory_pool().release_unused()  # the per-part buffers of the read (~120 MB at 377k rows)
    return table


def _keys(source: pa.Array, size: pa.Array, version: pa.Array) -> pa.Array:
    """One Arrow string per input: ``source \0 size \0 version`` (never Python objects per row)."""
    return pc.binary_join_element_wise(pc.cast(source, pa.string()), pc.cast(size, pa.string()),
                                       pc.cast(version, pa.string()), "\0")


def select_new(inputs: list[InputRef], ledger: Any, *, max_attempts: int = 3,
               retry_rejected: bool = False) -> list[InputRef]:
    """Inputs to read this run: those whose ``(source label, size, version)`` has no ledger row yet,
    those whose best outcome so far is a transient rejection (``IO_ERROR``, ``WORKER_LOST``,
    ``TIMEOUT``) tried fewer than ``max_attempts`` times, and with ``retry_rejected`` every
    rejected one.

    Computed in Arrow: an input is *settled* by an ``ok`` or ``duplicate`` row, by a permanent
    rejection (unless ``retry_rejected``), or by ``max_attempts`` transient ones."""
    if ledger is None or len(ledger) == 0 or not inputs:
        return list(inputs)
    if not isinstance(ledger, pa.Table):  # a pandas DataFrame (pandas is imported only by the caller that has one)
        ledger = pa.Table.from_pandas(ledger[OUTCOME_COLUMNS], preserve_index=False)
    keys = _keys(ledger["source"], ledger["size"], ledger["version"])
    status, reason = ledger["status"], ledger["reason"]
    transient = pc.fill_null(pc.is_in(reason, value_set=pa.array(TRANSIENT_REASONS)), False)
    settles = pc.is_in(status, value_set=pa.array(["ok", "duplicate"]))
    if not retry_rejected:
        settles = pc.or_(settles, pc.and_(pc.equal(status, "rejected"), pc.invert(transient)))
    settled = [pc.filter(keys, settles)]
    if not retry_rejected:
        tries = pa.table({"key": pc.filter(keys, transient)}).group_by("key").aggregate([("key", "count")])
        settled.append(pc.filter(tries["key"], pc.greater_equal(tries["key_count"], max_attempts)))
    settled_keys = pa.chunked_array(settled, type=pa.string()).combine_chunks()
    mine = _keys(pa.array([r.label for r in inputs], pa.string()),
                 pa.array(np.fromiter((r.size for r in inputs), dtype=np.int64, count=len(inputs))),
                 pa.array([r.version for r in inputs], pa.string()))
    take = pc.invert(pc.is_in(mine, value_set=settled_keys)).to_numpy(zero_copy_only=False)
    del keys, settled, settled_keys, mine
    pa.default_memory_pool().release_unused()
    return [ref for ref, t in zip(inputs, take) if t]


def with_worker_memory(settings: Settings, client: Any) -> Settings:
    """``settings`` with ``limits.worker_memory_bytes`` set to the smallest memory limit of the cluster's
    workers (left as configured when the workers report none)."""
    limits = [int(w.get("memory_limit") or 0) for w in client.scheduler_info().get("workers", {}).values()]
    smallest = min((m for m in limits if m > 0), default=0)
    if not smallest or settings.limits.worker_memory_bytes:
        return settings
    return settings.model_copy(update={"limits": settings.limits.model_copy(update={"worker_memory_bytes": smallest})})


@task(name="discover", cache_policy=NO_CACHE)
def discover_task(source: str, store: str, storage_options: dict[str, Any] | None,
                  settings: Settings, query: dict[str, str] | None = None) -> tuple[list[InputRef], list[InputRef]]:
    key = resolve_secret_key(settings)
    inputs = discover(source, storage_options, settings.limits, follow_links=settings.follow_links, query=query,
                      secret=key)
    if settings.privacy.hash_sources and not is_dicomweb(source):  # (DICOMweb labels are keyed already)
        inputs = [dataclasses.replace(r, source=source_label(key, r.uri)) for r in inputs]
    new = select_new(inputs, read_outcomes(store, storage_options), max_attempts=settings.retry_attempts,
                     retry_rejected=settings.retry_rejected)
    run_logger().info("%d inputs discovered, %d new", len(inputs), len(new))
    return inputs, new


@task(name="index-headers", cache_policy=NO_CACHE)
def index_task(new: list[InputRef], settings: Settings, storage_options: dict[str, Any] | None) -> HeaderIndex:
    """Read the new inputs' headers on the workers, a chunk per Dask task; the flow keeps them column
    by column (:class:`HeaderIndex`), never as a row object per input."""
    from distributed import get_client
    from distributed.scheduler import KilledWorker

    t0 = time.perf_counter()
    client = get_client()
    index = HeaderIndex(new)
    threads = max(1, sum(client.nthreads().values()))
    n = max(1, min(settings.header_files_per_task, -(-len(new) // (4 * threads))))  # several tasks per thread
    report("stage-start", stage="index headers", total=len(new))
    kwargs = {"limits": settings.limits, "storage_options": storage_options, "secret": resolve_secret_key(settings)}
    starts = {}
    for start in range(0, len(new), n):
        refs = [(r.uri, r.size, r.version, r.unsafe, r.reason) for r in new[start : start + n]]
        starts[submit(client, index_inputs, refs, **kwargs)] = (start, refs)
    for fut in each_done(list(starts)):
        start, refs = starts.pop(fut)
        try:
            part = fut.result()
        except KilledWorker:  # one of these headers kills its worker: read them one by one
            part = []
            for ref in refs:
                lost, found = _alone(client, index_inputs, [ref], timeout_s=settings.limits.input_timeout_s, **kwargs)
                part += found if not lost else [{
                    "uri": ref[0], "size": ref[1], "version": ref[2], "status": "rejected", "reason": lost,
                    "detail": lost_detail(lost, "reading this header")}]
        fut.release()
        index.fill(start, part)
        report("stage-advance", stage="index headers", advance=len(part))
    report("stage-end", stage="index headers")
    run_logger().info("indexed %d headers in %.1f s", len(new), time.perf_counter() - t0)
    return index


def _stored_sop_uids(store: str, candidates: list[Any], storage_options: dict[str, Any] | None) -> set[str]:
    """The candidates' SOP keys that the store already holds (read with a filter: the flow never loads
    the whole ``instances`` column)."""
    keys = sorted({c["sop_key"] for c in candidates if c["sop_key"]})
    if not keys:
        return set()
    table = read_arrow(store, "instances", storage_options, columns=["sop_uid"], filters=[("sop_uid", "in", keys)])
    return set() if table is None else set(table["sop_uid"].to_pylist())


_INDEX_KEYS = {"dicom": "next_index", **{k: v.meta_key for k, v in KINDS.items()}}


@task(name="plan-batches", cache_policy=NO_CACHE)
def plan_task(store: str, candidates: list[dict[str, Any]], settings: Settings,
              storage_options: dict[str, Any] | None) -> tuple[Journal, list[BatchPlan]]:
    """Plan batches, record the plan in the journal, then reserve their regions (the flow is the
    only writer of array shapes)."""
    root = layout.open_root(zarr_store(store, storage_options), mode="r+")
    meta = dict(root.attrs["radflow"])
    names = sorted({r["array"] for r in candidates})
    existing = {}
    for name in names:
        try:
            existing[name] = root[name]
        except KeyError:
            pass
    batches: list[BatchPlan] = []
    lengths: dict[str, int] = {}
    counters: dict[str, int] = {}
    for kind, key in _INDEX_KEYS.items():
        planned, pos, next_index = plan_batches(
            [r for r in candidates if r["kind"] == kind],
            next_position={name: a.shape[0] for name, a in existing.items()},
            next_index=int(meta.get(key, 0)),
            shard_target_mib=settings.shard_target_mib,
            frames_per_shard={name: int(a.attrs["frames_per_shard"]) for name, a in existing.items()},
            max_files_per_batch=settings.max_files_per_batch,
        )
        batches += planned
        lengths.update({k: v for k, v in pos.items() if any(b.array == k for b in planned)})
        counters[key] = next_index
    journal = write_journal(store, batches, lengths, counters, storage_options)
    reserve(root, journal, settings)
    run_logger().info("planned %d batches over %d arrays", len(batches), len({b.array for b in batches}))
    return journal, batches


def reserve(root, journal: Journal, settings: Settings) -> None:
    """Create the plan's arrays, grow them to its lengths and advance the index counters;
    idempotent, so a resumed run applies an interrupted plan again safely."""
    arrays: dict[str, Any] = {}
    for b in journal.plans:
        if b.array in arrays:
            continue
        try:
            arrays[b.array] = root[b.array]
            continue
        except KeyError:
            pass
        kind = "raw" if b.kind == "dicom" else b.kind
        dims = {"dicom": None, "kspace": ("slice", "coil", "ky", "kx"), "sinogram": ("slice", "detector", "angle")}[b.kind]
        arrays[b.array] = layout.ensure_frames_array(root, b.array, dtype=b.dtype, shape=b.shape, fps=b.frames_per_shard,
                                                     codec=settings.raw_codec, zstd_level=settings.raw_zstd_level, kind=kind,
                                                     dims=dims)
        if b.array_attrs:
            arrays[b.array].attrs.update(b.array_attrs)
        if b.ref_shape:
            layout.ensure_frames_array(root, reference_path(b.array), dtype="float32", shape=b.ref_shape,
                                       fps=b.frames_per_shard, codec=settings.raw_codec, zstd_level=settings.raw_zstd_level,
                                       kind="reference", dims=("slice", "y", "x"))
    for name, pos in journal.lengths.items():
        for path in (name,) if name.startswith("raw/") else (name, reference_path(name)):
            try:
                arr = root[path]
            except KeyError:
                continue
            if arr.shape[0] < pos:
                arr.resize((pos, *arr.shape[1:]))
    meta = dict(root.attrs["radflow"])
    layout.update_meta(root, **{k: max(int(meta.get(k, 0)), v) for k, v in journal.meta.items()})


def _run_batches(dst: str, plans: list[BatchPlan], cfg: Settings, storage_options: dict[str, Any] | None,
                 results: list[dict[str, Any]]) -> None:
    if plans:
        results += batches_task(dst, quote(plans), cfg, storage_options)


@task(name="ingest-batches", cache_policy=NO_CACHE)
def batches_task(store: str, plans: list[BatchPlan], settings: Settings,
                 storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every batch of a plan as Dask tasks (one per batch, a few in flight per worker thread): Prefect
    sees one task run for the whole plan, not one per shard (at MIMIC-CXR's size that would be tens of
    thousands of task runs, each ~70 ms of bookkeeping)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed as done_in_order

    from distributed import get_client

    client = get_client()
    in_flight = max(2, 2 * sum(client.nthreads().values()))
    out: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=min(in_flight, len(plans))) as pool:
        futures = [pool.submit(run_batch, client, store, p, settings, storage_options) for p in plans]
        run_logger().info("submitting %d batches (%d inputs) to %d worker threads", len(plans),
                          sum(len(p.inputs) for p in plans), sum(client.nthreads().values()))
        for fut in done_in_order(futures):
            res = fut.result()
            out.append(res)
            report("stage-advance", stage="ingest", advance=res["inputs"])
    return out


@task(name="resume", cache_policy=NO_CACHE)
def resume_task(dst: str, cfg: Settings, storage_options: dict[str, Any] | None,
                uris: dict[str, str]) -> list[dict[str, Any]]:
    """Finish the plans of runs that were killed: their unfinished batches run again as planned
    (``uris`` maps source labels to paths for inputs whose paths are hashed)."""
    results: list[dict[str, Any]] = []
    for journal in pending_journals(dst, storage_options):
        journal = with_uris(journal, uris)
        done = completed_batches(dst, storage_options)
        todo = [p for p in journal.plans if p.batch_id not in done]
        run_logger().warning("resuming an interrupted run: %d of its %d batches to do", len(todo), len(journal.plans))
        reserve(layout.open_root(zarr_store(dst, storage_options), mode="r+"), journal, cfg)
        _run_batches(dst, todo, cfg, storage_options, results)
        remove_journal(dst, journal, storage_options)
    return results


@task(name="check-duplicates", cache_policy=NO_CACHE)
def duplicates_task(store: str, duplicates: list[dict[str, Any]], settings: Settings,
                    storage_options: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compare duplicate candidates with the stored copy; return those whose first copy was not stored."""
    from distributed import get_client

    stored = _stored_sop_uids(store, duplicates, storage_options)
    unresolved = [d for d in duplicates if d["sop_key"] not in stored]
    todo = [d for d in duplicates if d["sop_key"] in stored]
    chunks = [todo[i : i + 64] for i in range(0, len(todo), 64)]
    # each chunk's worker reads the stored frames it compares with: no per-frame rows through this process
    versions.checkpoint(store, "checkpoint: before duplicate checks")  # the checks read frames this run stored
    futures = [submit(get_client(), versions.task(store, check_duplicates), store, c, limits=settings.limits,
                      storage_options=storage_options, masks=settings.privacy.masks) for c in chunks]
    results = [versions.settle(store, result(f)) for f in futures]
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r["reasons"])
    return unresolved, {"inputs": sum(r["inputs"] for r in results), "reasons": dict(reasons)}


def run_batch(client, store: str, plan: BatchPlan, settings: Settings, storage_options: dict[str, Any] | None,
              *, retries: int = 1) -> dict[str, Any]:
    """Run one batch on the cluster. If it kills its worker (a decoder crash, an out-of-memory
    kill, or a decoder hang ended by the worker's deadline), each input is probed alone, and the
    batch runs again without the inputs that kill workers; those get ``WORKER_LOST`` or
    ``TIMEOUT`` rows and every other input is stored as usual. Another error is retried
    ``retries`` times (a batch's outputs are pure functions of its plan: a retry overwrites them)."""
    try:
        return _run_batch(client, store, plan, settings, storage_options)
    except NoWorkers:  # no cluster left to retry on: the run ends (and resumes when run again)
        raise
    except Exception as exc:  # noqa: BLE001 - retried, then raised
        if not retries:
            raise
        run_logger().warning("batch %s failed (%s); retrying", plan.batch_id, exc)
        time.sleep(2)
        return run_batch(client, store, plan, settings, storage_options, retries=retries - 1)


def _run_batch(client, store: str, plan: BatchPlan, settings: Settings, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    from distributed.scheduler import KilledWorker

    secret = resolve_secret_key(settings)

    # each submission its own key: the same key would get an earlier run's result (or error) back from a
    # scheduler that still holds it (a shared cluster, a resumed run in the same process)
    def run(p: BatchPlan, lost: tuple[tuple[BatchInput, str], ...] = (), attempt: int = 0) -> dict[str, Any]:
        return versions.settle(store, result(submit(
            client, versions.task(store, write_batch), store, p, secret=secret, limits=settings.limits,
            storage_options=storage_options, lost=lost, privacy=settings.privacy,
            key=f"ingest-batch-{p.batch_id}-{len(lost)}-{attempt}-{uuid.uuid4().hex[:8]}")))

    try:
        return run(plan)
    except KilledWorker:  # this batch, or one running beside it on the same worker, killed the worker
        run_logger().warning("batch %s lost its worker; probing its %d inputs one by one", plan.batch_id, len(plan.inputs))
    with _PROBE_LOCK:
        return _careful(run, client, plan, settings, storage_options)


def _careful(run, client, plan: BatchPlan, settings: Settings, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """A batch that lost its worker: its inputs probed alone, then the batch without those that kill
    workers, run again until it passes (the caller holds the probe lock: no other probe runs meanwhile)."""
    from distributed.scheduler import KilledWorker

    probes = [(i, _alone(client, probe_input, i.uri, settings.limits, storage_options,
                         timeout_s=settings.limits.input_timeout_s)[0]) for i in plan.inputs]
    lost: list[tuple[Any, ...]] = [(i, reason) for i, reason in probes if reason]
    keep = dataclasses.replace(plan, inputs=tuple(i for i, reason in probes if not reason))
    for attempt in range(1, len(plan.inputs) + 3):
        try:
            return run(keep, tuple(lost), attempt)
        except KilledWorker:
            if attempt < 2 or not keep.inputs:  # each input decoded on its own: a death now may be a neighbour's
                continue
        # it keeps dying although each input decoded alone (a batch holds more in memory than a probe): the
        # input that decodes to the most bytes is left out, until the batch passes or holds nothing to decode
        culprit = max(keep.inputs, key=lambda i: i.frames)
        lost.append((culprit, *_blame(culprit, keep, settings)))
        keep = dataclasses.replace(keep, inputs=tuple(i for i in keep.inputs if i is not culprit))
        run_logger().warning("batch %s keeps losing its worker; left out its largest input (%s)", plan.batch_id,
                             lost[-1][1])
    return run(keep, tuple(lost), len(plan.inputs) + 3)  # nothing left to decode: its rows are written


def _blame(item: Any, plan: BatchPlan, settings: Settings) -> tuple[str, str]:
    """The reason and detail of an input left out of a batch that kept killing its worker although the
    input decoded alone: ``MEMORY_LIMIT`` when its decoded size is a large share of a worker's memory."""
    import numpy as np

    decoded = item.frames * int(np.prod(plan.shape)) * np.dtype(plan.dtype).itemsize
    memory = settings.limits.worker_memory_bytes
    if memory and decoded * settings.limits.decode_memory_factor >= memory / 4:
        return Reason.MEMORY_LIMIT.value, (
            f"its batch killed the worker on every attempt; it decodes to {decoded / 2**20:.0f} MiB of a worker's "
            f"{memory / 2**20:.0f} MiB (give workers more memory, RADFLOW_CLUSTER__MEMORY_LIMIT)")
    return Reason.WORKER_LOST.value, ("its batch killed the worker on every attempt although it decoded alone; "
                                      "it was the batch's largest input")


def summarize(results: list[dict[str, Any]], index_rejects: list[dict[str, Any]], discovered: int, new: int,
              seconds: float, duplicates: Counter[str] | None = None) -> dict[str, Any]:
    """Run summary from batch results (counts only; nothing identifying)."""
    reasons: Counter[str] = Counter(r["reason"] for r in index_rejects)
    for r in results:
        reasons.update(r["rejected"])
    dup = Counter({k: v for k, v in (duplicates or {}).items() if k.startswith("DUPLICATE")})
    reasons.update({k: v for k, v in (duplicates or {}).items() if not k.startswith("DUPLICATE")})
    anomalies: Counter[str] = Counter()
    for r in results:
        anomalies.update(r.get("anomalies", {}))
    ok = sum(r["ok"] for r in results)
    frames = sum(r["frames"] for r in results)
    bytes_in = sum(r["bytes_in"] for r in results)
    pixel_bytes = sum(r["pixel_bytes"] for r in results)
    phases: Counter[str] = Counter()
    for r in results:
        phases.update(r.get("phase_seconds", {}))
    return {
        "discovered": discovered,
        "new": new,
        "ok": ok,
        "rejected": dict(sorted(reasons.items())),
        "duplicates": dict(sorted(dup.items())),
        "anomalies": dict(sorted(anomalies.items())),
        "frames": frames,
        "batches": len(results),
        "bytes_in": bytes_in,
        "pixel_bytes": pixel_bytes,
        "seconds": seconds,
        "phase_seconds": {k: round(phases[k], 3) for k in PHASES if k in phases},  # summed over the workers' threads
        "mb_per_s": bytes_in / seconds / 1e6 if seconds > 0 else 0.0,
        "images_per_s": frames / seconds if seconds > 0 else 0.0,
    }


def _artifact(store: str, summary: dict[str, Any]) -> None:
    head = {k: summary[k] for k in ("discovered", "new", "ok", "frames", "batches", "mb_per_s", "images_per_s", "seconds")}
    rejected = [{"reason": k, "inputs": v} for k, v in summary["rejected"].items()]
    kept = [{"anomaly": k, "inputs": v} for k, v in summary.get("anomalies", {}).items()]
    extra = f"Dask performance report: `{summary['performance_report']}`\n\n" if summary.get("performance_report") else ""
    md = (f"# radflow ingest\n\nStore: `{store}`\n\n{extra}{markdown_table([head])}\n## Rejected by reason\n\n"
          f"{markdown_table(rejected)}\n## Kept with anomalies\n\n{markdown_table(kept)}")
    publish_artifact(md, key="radflow-ingest", description="radflow ingest summary")


@flow(name="radflow-ingest", task_runner=ThreadPoolTaskRunner(max_workers=8), validate_parameters=False)
def ingest_flow(
    source: str,
    store: str,
    cluster: str | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ingest every new DICOM input under ``source`` into the store at ``store``.

    Parameters
    ----------
    source : local directory, ``s3://`` prefix, zip/tar archive, DICOMDIR, or a DICOMweb service
        (``dicomweb+https://host/dicom-web``)
    store : store URL (created if absent)
    cluster : scheduler address; None starts a local cluster (or reuses the current client)
    storage_options : fsspec options for both URLs (e.g. ``{"endpoint_url": ...}``; default:
        ``RADFLOW_STORAGE_OPTIONS``)
    settings : overrides of :class:`radflow.config.Settings` fields
    query : a DICOMweb source's QIDO-RS filters (``{"Modality": "CR,DX", "StudyDate": "20200101-20201231"}``;
        a comma lists alternatives)

    Returns
    -------
    dict : the run summary (counts, bytes, throughput).
    """
    t0 = time.perf_counter()
    cfg = build_settings(settings, cluster)
    storage_options = storage_options if storage_options is not None else (cfg.storage_options or None)
    src, dst = normalize(source), normalize(store)
    if is_dicomweb(src):  # its settings travel with the options (the store's options are the rest)
        storage_options = {**(storage_options or {}), "dicomweb": {"settings": cfg.dicomweb}}
    else:
        fs, root = filesystem(src, storage_options)
        if not fs.exists(root):  # before the writer lock, which creates the store's folder
            raise FileNotFoundError(f"source {src!r} does not exist")
    # what is new is decided under the lock
    with writer(dst, storage_options, command="ingest", wait_s=cfg.writer_wait_s):
        return _ingest(src, dst, cfg, storage_options, t0, query)


def _ingest(src: str, dst: str, cfg: Settings, storage_options: dict[str, Any] | None, t0: float,
            query: dict[str, str] | None = None) -> dict[str, Any]:
    """Under the writer lock: in a versioned store, one transaction (checkpoints every
    ``checkpoint_batches`` batches, the rest committed at the end as one version)."""
    key = resolve_secret_key(cfg)
    # a missing source fails here, before the store exists
    inputs, new = discover_task(src, dst, storage_options, cfg, query)
    # (a killed run's plan is in a checkpoint, which makes the transaction collect what that run left uncommitted)
    with transaction(dst, storage_options, command="ingest", create=cfg.store_format == 2, message="ingest") as tx:
        if tx is not None:
            tx.checkpoint_every = cfg.checkpoint_batches
        summary = _ingest_in(src, dst, cfg, storage_options, t0, key, inputs, new, query)
        if tx is not None:
            tx.summary = {k: summary[k] for k in ("discovered", "new", "ok", "frames") if k in summary}
    if tx is not None:
        summary["versions"], summary["commit_s"] = len(tx.commits), round(tx.commit_seconds, 3)
    return summary


def _ingest_in(src: str, dst: str, cfg: Settings, storage_options: dict[str, Any] | None, t0: float, key: bytes,
               inputs: list[InputRef], new: list[InputRef], query: dict[str, str] | None) -> dict[str, Any]:
    log = run_logger()
    results: list[dict[str, Any]] = []
    layout.create_root(zarr_store(dst, storage_options), source=src, key_fingerprint=key_fingerprint(key),
                       radflow_version=VERSION, privacy=privacy_record(cfg.privacy, key))
    if pending_journals(dst, storage_options):  # a killed run left reservations: finish them first
        with connect(cfg.cluster) as client, request_slots(client, src, cfg, storage_options) as opts:
            results += resume_task(dst, cfg, opts, quote({r.label: r.uri for r in inputs}))
        inputs, new = discover_task(src, dst, storage_options, cfg, query)
    if not new:
        if not results:
            log.info("nothing new under %s; the store is unchanged", src)
        summary = summarize(results, [], len(inputs), 0, time.perf_counter() - t0)
        _artifact(dst, summary)
        return summary
    compacted: dict[str, Any] = {}
    with connect(cfg.cluster) as client, performance_report(dst, cfg, storage_options, "ingest") as report_url, \
            request_slots(client, src, cfg, storage_options) as storage_options:
        link = dashboard_link(client)
        if link:
            log.info("Dask dashboard: %s", link)
            report("dashboard", url=link)
        cfg = with_worker_memory(cfg, client)
        index = index_task(quote(new), cfg, storage_options)
        rejects = [r.to_dict() for r in index.with_status("rejected")]
        candidates = list(index.with_status("candidate"))
        pending, duplicates = split_duplicates(candidates, _stored_sop_uids(dst, candidates, storage_options))
        del candidates
        if rejects:
            # the ledger's part count before this run is part of the name (a listing, not a second read of the
            # ledger discovery read): a later run's retry of the same inputs (a transient reason) adds an attempt
            prior = len(part_names(dst, "ledger", storage_options))
            part = hashlib.sha256("\0".join([str(prior), *(f"{r['uri']}\0{r['size']}\0{r['version']}" for r in rejects)])
                                  .encode()).hexdigest()[:16]
            write_part(dst, "ledger", f"index-{part}",
                       [ledger_row(r["source"], r["size"], r["version"], status="rejected", reason=r["reason"],
                                   detail=r["detail"], batch=f"index-{part}") for r in rejects],
                       schema=LEDGER_SCHEMA, storage_options=storage_options)
        dup_reasons: Counter[str] = Counter()
        report("stage-start", stage="ingest", total=len(new) - len(rejects))
        while pending or duplicates:  # a duplicate whose first copy failed to store becomes the next round's primary
            if pending:
                journal, plans = plan_task(dst, quote(pending), cfg, storage_options)
                _run_batches(dst, plans, cfg, storage_options, results)
                remove_journal(dst, journal, storage_options)
            if not duplicates:
                break
            unresolved, checked = duplicates_task(dst, quote(duplicates), cfg, storage_options)
            dup_reasons.update(checked["reasons"])
            report("stage-advance", stage="ingest", advance=checked["inputs"])
            pending, duplicates = split_duplicates(unresolved, set())
        report("stage-end", stage="ingest")
        compacted = compact_tables(client, dst, storage_options, cfg.compact_parts)
    summary = summarize(results, rejects, len(inputs), len(new), time.perf_counter() - t0, dup_reasons)
    if report_url:
        summary["performance_report"] = report_url
    if compacted:
        summary["compacted"] = compacted
    log.info("ingested %d of %d new inputs (%d frames) at %.1f MB/s", summary["ok"], summary["new"], summary["frames"], summary["mb_per_s"])
    _artifact(dst, summary)
    return summary
