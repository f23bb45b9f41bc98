"""Writing and reading assembled volumes: ``volumes/<key>`` ``(z, y, x)`` with geometry attributes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from zarr.codecs import Crc32cCodec, ZstdCodec

from radflow.store import layout
from radflow.store.shards import ShardReader
from radflow.store.urls import zarr_store

__all__ = ["write_volume"]


def write_volume(store_url: str, plan: Any, frames: pd.DataFrame, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the plan's frames (native size) in slice order and write them as one volume array.

    ``frames`` has ``index, raw_array, raw_position, rows, cols`` for the plan's indices.
    Returns the volume's ``volumes`` table record.
    """
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r+")
    by_index = frames.set_index("index")
    readers: dict[str, ShardReader] = {}  # each raw array's shard indexes read once
    slices = []
    for i in plan.indices:
        row = by_index.loc[i]
        name = str(row["raw_array"])
        if name not in readers:
            readers[name] = ShardReader(root[f"raw/{name}"])
        slices.append(readers[name].frame(int(row["raw_position"]))[: int(row["rows"]), : int(row["cols"])])
    volume = np.stack(slices)
    record = plan.record()
    zchunk = max(1, min(volume.shape[0], (64 * 2**20) // max(1, volume[0].nbytes)))
    out = root.create_array(
        f"volumes/{plan.key}", shape=volume.shape, chunks=(zchunk, *volume.shape[1:]), dtype=volume.dtype,
        compressors=[ZstdCodec(level=1), Crc32cCodec()], fill_value=0, dimension_names=("z", "y", "x"),
        attributes=plan.attributes(),
        overwrite=True,
    )
    out[:] = volume
    record["dtype"] = volume.dtype.name
    return record
