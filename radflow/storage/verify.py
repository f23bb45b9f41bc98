"""Re-read stored frames and check them against the CRC32 recorded at ingest.

A frame whose chunk is absent from its shard is reported as ``MISSING_CHUNK`` (never
read as zeros); one whose pixels no longer hash to the recorded CRC32 as
``CRC_MISMATCH``. Work is split by shard: each shard's index is read once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from radflow.storage import layout
from radflow.storage.batches import frame_crc32
from radflow.storage.urls import zarr_store

__all__ = ["present_frames", "verify_frames"]


def present_frames(arr: zarr.Array, positions: np.ndarray) -> np.ndarray:
    """Whether the chunk of each position exists, reading each shard's index once."""
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    shard_frames = arr.shards[0] if arr.shards else arr.chunks[0]
    n_inner = shard_frames // arr.chunks[0]
    out = np.zeros(len(positions), bool)
    prefix = arr.store_path.path
    for shard in np.unique(positions // shard_frames):
        key = f"{prefix}/c/" + "/".join([str(int(shard))] + ["0"] * (arr.ndim - 1))
        buf = sync(arr.store_path.store.get(key, default_buffer_prototype(),
                                            SuffixByteRequest(n_inner * layout._SHARD_INDEX_ENTRY + 4)))
        sel = positions // shard_frames == shard
        if buf is None:
            continue
        index = np.frombuffer(buf.to_bytes()[:-4], dtype="<u8").reshape(n_inner, 2)
        inner = (positions[sel] % shard_frames) // arr.chunks[0]
        out[sel] = ~((index[inner, 0] == layout._EMPTY) & (index[inner, 1] == layout._EMPTY))
    return out


def verify_frames(store_url: str, array: str, rows: list[dict[str, Any]],
                  storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Check frames of one array; ``rows`` hold ``index, position, rows, cols, crc32`` (and an id).

    Returns one problem dict per failing frame: ``{**id fields, "array", "problem", "detail"}``.
    """
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r")
    arr = root[array]
    positions = np.array([int(r["position"]) for r in rows], dtype=np.int64)
    present = present_frames(arr, positions)
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
