import numpy as np
import pytest
from hypothesis import given, strategies as st

from radflow.errors import MissingChunkError, StoreFormatError, StoreNotFoundError
from radflow.store import layout
from radflow.store.urls import zarr_store


@given(st.integers(1, 20000))
def test_size_class_covers_and_bounds_padding(n):
    c = layout.size_class(n)
    assert c >= n
    if n > 256:
        assert c - n < 256 and c % 256 == 0
    else:
        assert c < max(32, 2 * n)


def test_raw_array_name_groups_similar_sizes():
    assert layout.raw_array_name("<u2", 2500, 2048, 1) == "uint16_2560x2048"
    assert layout.raw_array_name("<u2", 2490, 2001, 1) == "uint16_2560x2048"
    assert layout.raw_array_name("|u1", 480, 640, 3) == "uint8_512x768x3"
    assert layout.raw_array_name("<i2", 64, 64, 1) == "int16_64x64"


def test_frames_per_shard_targets_size():
    assert layout.frames_per_shard(8 * 2**20, 128) == 16
    assert layout.frames_per_shard(2**30, 128) == 1
    assert layout.frames_per_shard(10, 128) == 1024


def test_store_root_and_chunk_presence(tmp_path):
    url = str(tmp_path / "s.zarr")
    with pytest.raises(StoreNotFoundError):
        layout.open_root(zarr_store(url))
    root = layout.create_root(zarr_store(url), source="src", key_fingerprint="k1", radflow_version="0")
    arr = layout.ensure_frames_array(root, "raw/uint16_512x512", dtype="<u2", shape=(512, 512), fps=4, zstd_level=1, kind="raw")
    arr.resize((8, 512, 512))
    arr = arr.with_config({"write_empty_chunks": True})
    arr[0:2] = np.zeros((2, 512, 512), np.uint16)  # all-zero frames are stored too
    arr[4] = 7
    present = [layout.chunk_present(arr, i) for i in range(8)]
    assert present == [True, True, False, False, True, False, False, False]
    with pytest.raises(MissingChunkError):
        layout.require_chunk(arr, 3)
    with pytest.raises(StoreFormatError, match="different pseudonymization key"):
        layout.create_root(zarr_store(url), source="src", key_fingerprint="other", radflow_version="0")


def test_images_array_refuses_canvas_change(tmp_path):
    root = layout.create_root(zarr_store(str(tmp_path / "s.zarr")), source="s", key_fingerprint="k", radflow_version="0")
    a = layout.ensure_images_array(root, n=10, canvas=64, dtype="float16", chunk_frames=4, shard_frames=8)
    assert a.shape == (10, 64, 64) and a.shards == (8, 64, 64)
    assert layout.ensure_images_array(root, n=20, canvas=64, dtype="float16", chunk_frames=4, shard_frames=8).shape[0] == 20
    with pytest.raises(StoreFormatError):
        layout.ensure_images_array(root, n=20, canvas=128, dtype="float16", chunk_frames=4, shard_frames=8)
