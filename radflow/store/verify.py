"""Re-read stored frames and check them against the CRC32 recorded at ingest.

A frame whose chunk is absent from its shard is reported as ``MISSING_CHUNK`` (never
read as zeros); one whose pixels no longer hash to the recorded CRC32 as
``CRC_MISMATCH``. Work is split by shard: each shard's index is read once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from radflow.store import layout
from radflow.store.layout import frame_crc32
from radflow.store.urls import zarr_store

__all__ = ["verify_frames", "content_digest"]


def verify_frames(store_url: str, array: str, rows: list[dict[str, Any]],
                  storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Check frames of one array; ``rows`` hold ``index, position, rows, cols, crc32`` (and an id).

    Returns one problem dict per failing frame: ``{**id fields, "array", "problem", "detail"}``.
    """
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
    arr = root[array]
    positions = np.array([int(r["position"]) for r in rows], dtype=np.int64)
    present = layout.present_frames(arr, positions)
    problems = []
    for r, ok in zip(rows, present):
        ident = {k: r[k] for k in ("index", "kspace_index", "sinogram_index") if k in r}
        if not ok:
            problems.append({**ident, "array": array, "position": int(r["position"]), "problem": "MISSING_CHUNK",
                             "detail": "chunk absent from its shard"})
            continue
        frame = np.asarray(arr[int(r["position"])])
        if r.get("rows"):
            frame = frame[: int(r["rows"]), : int(r["cols"])]
        crc = frame_crc32(frame)
        if crc != int(r["crc32"]):
            problems.append({**ident, "array": array, "position": int(r["position"]), "problem": "CRC_MISMATCH",
                             "detail": f"crc32 {crc:08x}, recorded {int(r['crc32']):08x}"})
    return problems


_VOLATILE_KEYS = {"created", "updated", "seconds", "write_seconds", "radflow_version"}


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

    from radflow.store.tables import TABLES, list_parts, read_table

    root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
    out: dict[str, str] = {"attrs": hashlib.sha256(json.dumps(_stable(dict(root.attrs)), sort_keys=True,
                                                               default=str).encode()).hexdigest()}
    for path, arr in _all_arrays(root):
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
    for name in sorted(set(TABLES) | {"evaluation", "calibration"}):
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
