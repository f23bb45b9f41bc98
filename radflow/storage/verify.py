"""Re-read stored frames and check them against the CRC32 recorded at ingest.

A frame whose chunk is absent from its shard is reported as ``MISSING_CHUNK`` (never
read as zeros); one whose pixels no longer hash to the recorded CRC32 as
``CRC_MISMATCH``. Work is split by shard: each shard's index is read once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.storage import layout
from radflow.storage.batches import frame_crc32
from radflow.storage.urls import zarr_store

__all__ = ["verify_frames"]


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
