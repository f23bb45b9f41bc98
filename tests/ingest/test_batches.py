import pytest
from hypothesis import given, settings, strategies as st

from radflow.ingest.batches import plan_batches
from radflow.store.layout import raw_array_name, size_class

def entry(uri, rows, cols, dtype, frames):
    return {"uri": uri, "size": 1, "version": "v", "kind": "dicom", "array": "raw/" + raw_array_name(dtype, rows, cols, 1),
            "shape": [size_class(rows), size_class(cols)], "ref_shape": [], "dtype": dtype, "frames": frames}


sizes = st.sampled_from([(512, 512, "<u2"), (2048, 2048, "<u2"), (100, 120, "|u1"), (3000, 2500, "<u2")])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sizes, st.integers(1, 40)), min_size=1, max_size=60), st.integers(0, 100))
def test_plans_own_disjoint_shard_aligned_regions(files, next_index):
    entries = [entry(f"f{i:04d}", r, c, dt, n) for i, ((r, c, dt), n) in enumerate(files)]
    batches, positions, end = plan_batches(entries, next_position={}, next_index=next_index, shard_target_mib=16)
    # every input planned exactly once
    assert sorted(i.uri for b in batches for i in b.inputs) == sorted(e["uri"] for e in entries)
    # global indices contiguous from next_index
    assert end == next_index + sum(e["frames"] for e in entries)
    spans = sorted((b.index, b.index + b.planned_frames) for b in batches)
    assert spans[0][0] == next_index and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # regions within an array: shard-aligned, disjoint, big enough
    for b in batches:
        assert b.position % b.frames_per_shard == 0
        assert b.capacity % b.frames_per_shard == 0 and b.capacity >= b.planned_frames
        assert all(e["array"] == b.array for e in entries if e["uri"] in {i.uri for i in b.inputs})
    by_array = {}
    for b in batches:
        by_array.setdefault(b.array, []).append((b.position, b.position + b.capacity))
    for name, regions in by_array.items():
        regions.sort()
        assert all(a[1] <= b[0] for a, b in zip(regions, regions[1:]))
        assert positions[name] == regions[-1][1]
    assert len({b.batch_id for b in batches}) == len(batches)


def test_plan_is_deterministic_and_appends_after_existing():
    entries = [entry(f"f{i}", 512, 512, "<u2", 1) for i in range(10)]
    a, _, _ = plan_batches(entries, next_position={}, next_index=0, shard_target_mib=1)
    b, _, _ = plan_batches(list(reversed(entries)), next_position={}, next_index=0, shard_target_mib=1)
    assert [x.batch_id for x in a] == [x.batch_id for x in b]
    c, pos, _ = plan_batches(entries, next_position={"raw/uint16_512x512": 8}, next_index=5, shard_target_mib=1,
                             frames_per_shard={"raw/uint16_512x512": 4})
    assert c[0].position == 8 and c[0].index == 5 and c[0].frames_per_shard == 4


@pytest.mark.parametrize("store_format", [1, 2])
def test_journal_keeps_hashed_paths_hashed(tmp_path, store_format):
    """A plan round-trips, with hashed paths kept hashed: beside a format-1 store as a file, inside a
    versioned store's transaction as a node its next version holds (and the version after the run not)."""
    import contextlib

    from radflow.ingest.batches import BatchInput, BatchPlan
    from radflow.ingest.journal import pending_journals, remove_journal, with_uris, write_journal
    from radflow.store import journal as recorded, versions

    store = str(tmp_path / "s.zarr")
    secret_path = "/archive/CANARY-SUBJECT-p10000032/s50414267/1.dcm"
    plan = BatchPlan("b1", "dicom", "raw/uint16_512x512", "<u2", (512, 512), (), 4, 0, 4, 0,
                     inputs=(BatchInput(secret_path, 10, "v", 1, "hmac-sha256:abc"), BatchInput("/plain/2.dcm", 11, "w", 1)))
    tx = versions.transaction(store, command="ingest", create=True) if store_format == 2 else contextlib.nullcontext()
    with tx:
        j = write_journal(store, [plan], {"raw/uint16_512x512": 4}, {"next_index": 2})
        (raw,) = recorded.documents(store)
        if store_format == 2:
            versions.checkpoint(store, "checkpoint: planned")
            assert not (tmp_path / "s.zarr" / "journal").exists()  # nothing beside the engine
            import zlib

            import zarr

            committed = zarr.open_group(versions.readonly(store).store, mode="r")[f"journal/{j.id}"]  # the newest version
            assert zlib.decompress(committed[:].tobytes()) == raw
        else:
            assert raw == open(tmp_path / "s.zarr" / "journal" / f"{j.id}.json", "rb").read()
        assert b"CANARY" not in raw and b"/plain/2.dcm" in raw
        (back,) = pending_journals(store)
        assert back.plans[0].inputs[0].uri == "" and back.lengths == {"raw/uint16_512x512": 4}
        restored = with_uris(back, {"hmac-sha256:abc": secret_path})
        assert restored.plans[0] == plan
        remove_journal(store, back)
        assert pending_journals(store) == []
    assert pending_journals(store) == [] and not (tmp_path / "s.zarr" / "journal").exists()
    if store_format == 2:
        assert len(versions.history(store)) == 3  # the repository's first, the plan's checkpoint, the run's end

def test_the_padding_canvas_is_reused_and_leaves_no_earlier_pixels():
    import numpy as np

    from radflow.ingest.batches import Canvas

    canvas = Canvas((6, 5), np.uint16)
    big = canvas(np.full((2, 6, 5), 9, np.uint16))
    assert big.shape == (2, 6, 5) and (big == 9).all()
    small = canvas(np.full((1, 3, 2), 4, np.uint16))  # the same buffer, a smaller frame
    assert np.shares_memory(big, small)
    assert (small[0, :3, :2] == 4).all() and not small[0, 3:].any() and not small[0, :3, 2:].any()
    more = canvas(np.ones((3, 6, 5), np.uint16))  # more frames than it holds: it grows
    assert more.shape == (3, 6, 5) and (more == 1).all()
