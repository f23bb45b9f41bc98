"""`radflow verify`: every frame re-read; a missing chunk and a changed frame are both reported."""

from __future__ import annotations

import os

import numpy as np
import pytest

import radflow
from radflow.store.urls import zarr_store

pytestmark = pytest.mark.slow


def test_verify_reports_missing_chunks_and_changed_pixels(tmp_path, prefect_api, dask_client):
    from radflow.synth import write_archive
    from radflow.synth.kspace import write_fastmri

    a = write_archive(tmp_path / "a", 8, seed=5, sizes=((512, 512), (600, 480)), broken=False)
    write_fastmri(os.path.join(a.dicom, "mr"), 1, slices=2, coils=2, shape=(64, 64), crop=(48, 48))
    store = str(tmp_path / "v.zarr")
    radflow.ingest(a.dicom, store, settings={"shard_target_mib": 1})  # small shards: several per array
    clean = radflow.verify(store)
    assert clean["checked"] == 8 + 2 and clean["problems"] == []

    st = radflow.open_store(store)
    inst = st.instances()
    victim = inst.iloc[0]
    import zarr

    arr = zarr.open_array(zarr_store(store), path=f"raw/{victim['raw_array']}", mode="r+")
    changed = np.asarray(arr[int(victim["raw_position"])])
    changed[0, 0] ^= 1
    arr[int(victim["raw_position"])] = changed
    other = inst[inst["raw_array"] != victim["raw_array"]].iloc[0]
    fps = int(zarr.open_array(zarr_store(store), path=f"raw/{other['raw_array']}", mode="r").attrs["frames_per_shard"])
    shard = int(other["raw_position"]) // fps
    os.remove(os.path.join(store, "raw", other["raw_array"], "c", str(shard), "0", "0"))
    gone = inst[(inst["raw_array"] == other["raw_array"]) & (inst["raw_position"] // fps == shard)]

    bad = radflow.verify(store)
    by_index = {p["index"]: p["problem"] for p in bad["problems"] if "index" in p}
    assert by_index[int(victim["index"])] == "CRC_MISMATCH"
    assert {i for i, p in by_index.items() if p == "MISSING_CHUNK"} == set(gone["index"])
    assert bad["checked"] == 10
    with pytest.raises(radflow.errors.MissingChunkError):
        st.raw_frame(int(gone["index"].iloc[0]))
