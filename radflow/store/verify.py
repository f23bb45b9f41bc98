"""Re-read stored frames and check them against the CRC32 recorded at ingest; check the store's
objects against each other.

A frame whose chunk is absent from its shard is reported as ``MISSING_CHUNK`` (never
read as zeros); one whose pixels no longer hash to the recorded CRC32 as
``CRC_MISMATCH``; one whose chunk cannot be decoded (the Zarr checksum codec's mismatch,
a corrupt shard index) as ``UNREADABLE_CHUNK``. Work is split by shard: each shard's index
is read once. :func:`check_structure` finds what no frame check can see: unreadable table
parts, arrays without metadata, ledger and instance rows missing for each other, chunks
no row points to. Every problem is a row; nothing raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from radflow.store import layout
from radflow.store.layout import frame_crc32
from radflow.store.shards import ShardReader
from radflow.store.urls import zarr_store

__all__ = ["verify_frames", "check_structure", "content_digest"]


def verify_frames(store_url: str, array: str, rows: list[dict[str, Any]],
                  storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Check frames of one array; ``rows`` hold ``index, position, rows, cols, crc32`` (and an id).

    Returns one problem dict per failing frame: ``{**id fields, "array", "problem", "detail"}``.
    """
    def ident(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r[k] for k in ("index", "kspace_index", "sinogram_index") if k in r}

    try:
        root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
        checksum = layout.frame_checksum_of(root)
        arr = root[array]
        positions = np.array([int(r["position"]) for r in rows], dtype=np.int64)
        reader = ShardReader(arr)
        present = reader.present(positions)  # each shard's index read once, kept for the frames' reads
    except Exception as exc:  # no metadata, or an index that does not parse: every frame of these rows is lost
        kind = "ARRAY_UNREADABLE" if not isinstance(exc, KeyError) else "ARRAY_MISSING"
        return [{**ident(r), "array": array, "position": int(r["position"]), "problem": kind,
                 "detail": f"{type(exc).__name__} opening the array or its shard index"} for r in rows]
    problems = []
    for r, ok in zip(rows, present):
        if not ok:
            problems.append({**ident(r), "array": array, "position": int(r["position"]), "problem": "MISSING_CHUNK",
                             "detail": "chunk absent from its shard"})
            continue
        try:
            frame = reader.frame(int(r["position"]))
        except Exception as exc:  # the checksum codec's mismatch, a truncated shard, a codec error
            problems.append({**ident(r), "array": array, "position": int(r["position"]), "problem": "UNREADABLE_CHUNK",
                             "detail": f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"})
            continue
        if r.get("rows"):
            frame = frame[: int(r["rows"]), : int(r["cols"])]
        crc = frame_crc32(frame, checksum)
        if crc != int(r["crc32"]):
            problems.append({**ident(r), "array": array, "position": int(r["position"]), "problem": "CRC_MISMATCH",
                             "detail": f"{checksum} {crc:08x}, recorded {int(r['crc32']):08x}"})
    return problems


# -- structure: objects that must exist and agree with each other --------------------------


def check_structure(store_url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Problems a frame-by-frame check cannot see, one dict each (``problem``, ``object``, ``detail``):

    * ``TABLE_PART_UNREADABLE`` — a Parquet part that does not parse (named by its path);
    * ``ARRAY_METADATA_MISSING`` — chunks on storage whose array has no readable ``zarr.json``;
    * ``LEDGER_ROWS_MISSING`` — an ingest batch whose frames are in ``instances`` but whose ledger part is gone;
    * ``INSTANCE_ROWS_MISSING`` — ``ok`` ledger rows whose frames have no ``instances`` rows;
    * ``ORPHAN_CHUNK`` — a stored frame that no ``instances`` row points to.
    """
    import json

    from radflow.store.tables import TABLES, read_table
    from radflow.store.urls import filesystem, join

    problems: list[dict[str, Any]] = []
    fs, root_path = filesystem(store_url, storage_options)
    fs.invalidate_cache(root_path)
    tables: dict[str, pd.DataFrame] = {}
    for name in sorted(set(TABLES) | {"evaluation", "calibration"}):
        unreadable: list[str] = []
        tables[name] = read_table(store_url, name, storage_options, unreadable=unreadable)
        problems += [{"problem": "TABLE_PART_UNREADABLE", "object": _relative(part, root_path),
                      "detail": "the Parquet part does not parse"} for part in unreadable]
    try:
        objects = fs.find(root_path)
    except FileNotFoundError:
        objects = []
    arrays = {}
    for obj in objects:
        rel = _relative(obj, root_path)
        parts = rel.split("/")
        if "c" in parts[:-1] and not rel.startswith("tables/"):
            arrays.setdefault("/".join(parts[: parts.index("c")]), None)
    for name in sorted(arrays):
        meta = join(store_url, name, "zarr.json")
        try:
            fs2, path = filesystem(meta, storage_options)
            json.loads(fs2.cat_file(path))
        except Exception as exc:
            problems.append({"problem": "ARRAY_METADATA_MISSING", "object": f"{name}/zarr.json",
                             "detail": f"chunks are stored but the array's metadata is {'absent' if isinstance(exc, FileNotFoundError) else 'unreadable'}"})
    ledger, inst = tables["ledger"], tables["instances"]
    acquisition_batches = {b for name in ("kspace", "sinograms") if "batch" in tables[name] for b in tables[name]["batch"]}
    if len(inst):
        batches = set(ledger["batch"])
        for batch, g in inst.groupby("batch"):
            if batch not in batches:
                problems.append({"problem": "LEDGER_ROWS_MISSING", "object": f"tables/ledger/part-{batch}.parquet",
                                 "detail": f"{len(g)} stored frames of batch {batch} have no ledger rows"})
    if len(ledger):
        ok = ledger[(ledger["status"] == "ok") & (ledger["frames"] > 0)]
        lost = ok[~ok["batch"].isin(set(inst["batch"]) | acquisition_batches)]
        for batch, g in lost.groupby("batch"):
            problems.append({"problem": "INSTANCE_ROWS_MISSING", "object": f"tables/instances/part-{batch}.parquet",
                             "detail": f"{len(g)} ok inputs ({int(g['frames'].sum())} frames) of batch {batch} "
                             "have no instance rows"})
    if len(inst):
        root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
        for name, g in inst.groupby("raw_array"):
            try:
                arr = root[f"raw/{name}"]
            except Exception:
                continue  # reported above as ARRAY_METADATA_MISSING (or by the frame check)
            try:
                present = np.flatnonzero(layout.present_frames(arr, np.arange(arr.shape[0])))
            except Exception:
                continue  # a shard index that does not parse: the frame check lists its frames
            orphans = sorted(set(present.tolist()) - set(g["raw_position"].astype(int)))
            if orphans:
                problems.append({"problem": "ORPHAN_CHUNK", "object": f"raw/{name}",
                                 "detail": f"{len(orphans)} stored frames no instance row points to (positions {orphans[:5]}…)"})
    return problems


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if path.startswith(root) else path


_VOLATILE_KEYS = {"created", "updated", "seconds", "write_seconds", "phase_seconds", "radflow_version"}


def _stable(obj: Any) -> Any:
    """``obj`` without run-dependent values (timestamps, timings)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in sorted(obj.items()) if k not in _VOLATILE_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    return obj


def content_digest(store_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """SHA-256 digests of a store's content, independent of how and when it was written.

    Covers every array (shape, dtype, attributes, which frames are present, and their
    decoded values), every table (rows sorted, timing columns dropped) and the root
    attributes (timestamps dropped). Two runs over the same inputs with the same settings
    and key give equal digests whatever the faults, retries, kills and resumes in between.
    Returns ``{"store": overall, "<array or table>": digest, ...}``.
    """
    import hashlib
    import json

    from radflow.store.tables import BOOKKEEPING, TABLES, list_parts, read_table

    root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
    out: dict[str, str] = {"attrs": hashlib.sha256(json.dumps(_stable(dict(root.attrs)), sort_keys=True,
                                                               default=str).encode()).hexdigest()}
    for path, arr in _all_arrays(root):
        if path.startswith("journal/"):  # an unfinished run's plan: bookkeeping, not content
            continue
        h = hashlib.sha256(json.dumps([path, list(arr.shape), str(arr.dtype), _stable(dict(arr.attrs))],
                                      default=str).encode())
        n = arr.shape[0] if arr.ndim else 0
        if "frames_per_shard" in arr.attrs and n:
            h.update(np.packbits(layout.present_frames(arr, np.arange(n))).tobytes())
        step = max(1, int(arr.chunks[0]) if arr.ndim else 1)
        for start in range(0, n, step * 16) if arr.ndim else [None]:
            block = np.asarray(arr[start : start + step * 16] if start is not None else arr[()])
            h.update(np.ascontiguousarray(block).tobytes())
        out[path] = h.hexdigest()
    for name in sorted((set(TABLES) | {"evaluation", "calibration"}) - set(BOOKKEEPING)):
        if not list_parts(store_url, name, storage_options):
            continue
        df = read_table(store_url, name, storage_options)
        df = df.drop(columns=[c for c in df.columns if c in _VOLATILE_KEYS])
        cols = sorted(df.columns)
        lines = sorted(df[cols].to_csv(index=False, header=False, float_format="%.17g").splitlines())
        out[f"tables/{name}"] = hashlib.sha256(("\n".join([",".join(cols), *lines])).encode()).hexdigest()
    out["store"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    return out


def _all_arrays(group, prefix: str = ""):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tables/ holds Parquet, not Zarr: zarr warns while listing
        members = sorted(group.members(), key=lambda kv: kv[0])
    for name, node in members:
        if isinstance(node, zarr.Array):
            yield prefix + name, node
        else:
            yield from _all_arrays(node, prefix + name + "/")
