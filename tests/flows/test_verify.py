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
    # format 1: the damage is done to its files directly (format 2's are below)
    radflow.ingest(a.dicom, store, settings={"shard_target_mib": 1, "store_format": 1})  # small shards: several per array
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


def test_verify_lists_every_damaged_object(tmp_path, prefect_api, dask_client):
    """A deleted ledger part, a deleted instances part, a truncated table part, an array without its
    zarr.json and a flipped byte inside a shard: each is one listed problem naming the object, and the
    command exits 1 (nothing raises)."""
    import glob
    import subprocess
    import sys

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 12, seed=7, sizes=((512, 512), (600, 480), (1024, 768)), broken=False)
    store = str(tmp_path / "d.zarr")
    radflow.ingest(a.dicom, store, settings={"shard_target_mib": 1, "max_files_per_batch": 2, "store_format": 1})
    assert radflow.verify(store)["problems"] == []
    st = radflow.open_store(store)
    inst = st.instances()
    by_array = inst.groupby("raw_array")
    arrays = sorted(by_array.groups)
    assert len(arrays) == 3
    # 1. a ledger part of a batch in array 0, 2. an instances part of a batch in array 1
    batch_a = by_array.get_group(arrays[0])["batch"].iloc[0]
    batch_b = by_array.get_group(arrays[1])["batch"].iloc[0]
    os.remove(os.path.join(store, "tables", "ledger", f"part-{batch_a}.parquet"))
    os.remove(os.path.join(store, "tables", "instances", f"part-{batch_b}.parquet"))
    # 3. a headers part cut short
    part = sorted(glob.glob(os.path.join(store, "tables", "headers", "*.parquet")))[0]
    data = open(part, "rb").read()
    open(part, "wb").write(data[: len(data) // 2])
    # 4. array 2 loses its metadata
    os.remove(os.path.join(store, "raw", arrays[2], "zarr.json"))
    # 5. one byte flipped in the middle of a shard of array 0 (its checksum codec must catch it)
    shard = sorted(glob.glob(os.path.join(store, "raw", arrays[0], "c", "*", "0", "0")))[-1]
    blob = bytearray(open(shard, "rb").read())
    blob[len(blob) // 3] ^= 0xFF
    open(shard, "wb").write(bytes(blob))

    res = radflow.verify(store)
    kinds = {p["problem"] for p in res["problems"]}
    objects = {p.get("object") for p in res["problems"]}
    assert f"tables/ledger/part-{batch_a}.parquet" in objects and "LEDGER_ROWS_MISSING" in kinds
    assert f"tables/instances/part-{batch_b}.parquet" in objects and "INSTANCE_ROWS_MISSING" in kinds
    assert os.path.relpath(part, store) in objects and "TABLE_PART_UNREADABLE" in kinds
    assert f"raw/{arrays[2]}/zarr.json" in objects and "ARRAY_METADATA_MISSING" in kinds
    assert kinds & {"UNREADABLE_CHUNK", "CRC_MISMATCH", "ARRAY_UNREADABLE"}, res["problems"]
    proc = subprocess.run([sys.executable, "-m", "radflow", "verify", store], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "TABLE_PART_UNREADABLE" in proc.stdout and "ARRAY_METADATA_MISSING" in proc.stdout


def test_verify_lists_the_damage_to_a_versioned_store(tmp_path, prefect_api, dask_client):
    """Format 2: a shard object gone from storage, a flipped byte in another, a listed ledger part
    deleted, a headers part cut short: each is listed (the frames of the lost shard as MISSING_CHUNK),
    nothing raises, and the command exits 1."""
    import glob
    import subprocess
    import sys

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 12, seed=7, sizes=((512, 512), (600, 480), (1024, 768)), broken=False)
    store = str(tmp_path / "d2.zarr")
    radflow.ingest(a.dicom, store, settings={"shard_target_mib": 1, "max_files_per_batch": 2})
    st = radflow.open_store(store)
    assert st.meta["format_version"] == 2 and radflow.verify(store)["problems"] == []
    inst = st.instances()
    # the largest objects are raw shards (the smaller ones include the ingest plan's, which the newest
    # version no longer holds: losing one of those is no damage to it)
    chunks = sorted(glob.glob(os.path.join(store, "repo", "chunks", "*")), key=os.path.getsize, reverse=True)
    assert len(chunks) >= 3
    os.remove(chunks[0])  # a shard object lost from storage
    blob = bytearray(open(chunks[1], "rb").read())
    blob[len(blob) // 3] ^= 0xFF  # one byte flipped inside another
    open(chunks[1], "wb").write(bytes(blob))
    batch = inst["batch"].iloc[-1]
    ledger = glob.glob(os.path.join(store, "tables", "ledger", f"part-{batch}.v*.parquet"))
    assert len(ledger) == 1
    os.remove(ledger[0])
    part = sorted(glob.glob(os.path.join(store, "tables", "headers", "*.parquet")))[0]
    data = open(part, "rb").read()
    open(part, "wb").write(data[: len(data) // 2])

    res = radflow.verify(store)
    kinds = {p["problem"] for p in res["problems"]}
    objects = {p.get("object") for p in res["problems"]}
    assert "MISSING_CHUNK" in kinds and kinds & {"UNREADABLE_CHUNK", "CRC_MISMATCH"}, res["problems"]
    missing = {(p["array"], p["position"]) for p in res["problems"] if p["problem"] == "MISSING_CHUNK"}
    assert len({a for a, _ in missing}) == 1  # the frames of one shard object
    assert os.path.relpath(ledger[0], store) in objects and "LEDGER_ROWS_MISSING" in kinds
    assert os.path.relpath(part, store) in objects and "TABLE_PART_UNREADABLE" in kinds
    proc = subprocess.run([sys.executable, "-m", "radflow", "verify", store], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "MISSING_CHUNK" in proc.stdout and "TABLE_PART_UNREADABLE" in proc.stdout


def test_each_store_is_checked_with_the_frame_checksum_it_records(tmp_path, prefect_api, dask_client):
    """New stores record CRC-32C (``radflow.frame_checksum``); a store made before names none and holds
    zlib's CRC-32, which verify goes on checking as CRC-32."""
    import zarr

    from radflow.store.layout import frame_crc32
    from radflow.store.verify import verify_frames
    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=2, sizes=((128, 128),), broken=False)
    store = str(tmp_path / "c.zarr")
    radflow.ingest(a.dicom, store, settings={"store_format": 1})
    root = zarr.open_group(zarr_store(store), mode="r+")
    assert root.attrs["radflow"]["frame_checksum"] == "crc32c"
    st = radflow.open_store(store)
    inst = st.instances()
    rows = {algorithm: [{"index": int(r["index"]), "position": int(r["raw_position"]), "rows": int(r["rows"]),
                         "cols": int(r["cols"]), "crc32": frame_crc32(st.raw_frame(int(r["index"])), algorithm)}
                        for _, r in inst.iterrows()] for algorithm in ("crc32", "crc32c")}
    assert [r["crc32"] for r in rows["crc32c"]] == list(inst["crc32"])  # what ingest recorded
    array = f"raw/{inst['raw_array'].iloc[0]}"
    assert verify_frames(store, array, rows["crc32c"]) == []
    wrong = verify_frames(store, array, rows["crc32"])
    assert len(wrong) == 3 and {p["problem"] for p in wrong} == {"CRC_MISMATCH"} and wrong[0]["detail"].startswith("crc32c")

    meta = dict(root.attrs["radflow"])
    del meta["frame_checksum"]  # as a store made before records it
    root.attrs["radflow"] = meta
    assert verify_frames(store, array, rows["crc32"]) == []
    assert len(verify_frames(store, array, rows["crc32c"])) == 3
