"""Whole shards written by radflow's shard writer: the bytes Zarr itself would write, readable by any Zarr
reader, frames never added left unwritten, and every frame still guarded by the chunk checksum."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import zarr

from radflow.errors import MissingChunkError
from radflow.store import layout
from radflow.store.shards import ShardWriter


def _array(root, name: str, compressors, *, n: int = 8, shards: int = 4, sharded: bool = True):
    return root.create_array(name, shape=(n, 40, 24), dtype="uint16", chunks=(1, 40, 24),
                             shards=(shards, 40, 24) if sharded else None, compressors=compressors, fill_value=0)


def _object(tmp_path, name: str, shard: int) -> bytes:
    return (tmp_path / "s.zarr" / name / "c" / str(shard) / "0" / "0").read_bytes()


def _written(tmp_path, codec: str, frames: int, seed: int):
    """Array ``a`` of ``s.zarr`` (8 frames, 4 per shard) with its first ``frames`` written by the writer."""
    arr = _array(zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), "a", layout.raw_compressors(codec))
    writer = ShardWriter(arr, 0)
    writer.add(np.random.default_rng(seed).integers(0, 4096, (frames, 40, 24), dtype=np.uint16))
    writer.flush()
    return arr


def _flip(tmp_path, shard: int, at: int) -> None:
    """Invert byte ``at`` of shard ``shard``'s object of array ``a``."""
    path = tmp_path / "s.zarr" / "a" / "c" / str(shard) / "0" / "0"
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", [*layout.RAW_CODECS, "zstd without a chunk checksum"])
def test_whole_shards_are_the_bytes_zarr_writes(tmp_path, codec):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    frames = np.random.default_rng(1).integers(0, 4096, (8, 40, 24), dtype=np.uint16)
    # (radflow's codecs end with a CRC-32C the writer appends itself; an array without one is written too)
    compressors = layout.raw_compressors(codec) if codec in layout.RAW_CODECS else [zarr.codecs.ZstdCodec(level=1)]
    ours, theirs = (_array(root, n, compressors) for n in ("ours", "theirs"))
    theirs[:] = frames
    writer = ShardWriter(ours, 0)
    writer.add(frames[:3])  # one input's frames at a time, shard boundaries anywhere
    writer.add(frames[3:])
    assert writer.frames == 8
    writer.flush()
    assert [_object(tmp_path, "ours", s) for s in (0, 1)] == [_object(tmp_path, "theirs", s) for s in (0, 1)]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s.zarr"))["ours"][:], frames)


def test_a_part_filled_shard_leaves_the_rest_unwritten(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = _array(root, "a", layout.raw_compressors("blosc-lz4"), n=12)
    frames = np.arange(5 * 40 * 24, dtype=np.uint16).reshape(5, 40, 24) + 1
    writer = ShardWriter(arr, 4)  # the second shard on
    writer.add(frames)
    writer.flush()
    back = arr[:]
    np.testing.assert_array_equal(back[4:9], frames)
    assert not back[:4].any() and not back[9:].any()
    assert layout.present_frames(arr, np.arange(12)).tolist() == [False] * 4 + [True] * 5 + [False] * 3
    with pytest.raises(ValueError, match="shard boundary"):
        ShardWriter(arr, 2)
    with pytest.raises(ValueError, match="do not fit"):
        ShardWriter(arr, 0).add(frames[:, :20])


def test_a_flipped_byte_in_a_written_shard_is_found(tmp_path):
    _written(tmp_path, "zstd", 4, seed=2)
    _flip(tmp_path, 0, 10)  # inside the first frame's compressed bytes
    with pytest.raises(ValueError, match="(?i)checksum|crc"):
        zarr.open_group(str(tmp_path / "s.zarr"))["a"][0]


def test_an_array_laid_out_otherwise_is_written_through_zarr(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = _array(root, "plain", layout.raw_compressors("zstd"), sharded=False)  # one object per frame
    frames = np.random.default_rng(3).integers(0, 4096, (3, 40, 24), dtype=np.uint16)
    writer = ShardWriter(arr, 2)
    writer.add(frames)
    writer.flush()
    np.testing.assert_array_equal(arr[2:5], frames)
    assert not arr[:2].any()


def test_new_raw_arrays_take_the_configured_codec(tmp_path):
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    lz4 = layout.ensure_frames_array(root, "raw/a", dtype="<u2", shape=(40, 24), fps=4, kind="raw")
    zstd = layout.ensure_frames_array(root, "raw/b", dtype="<u2", shape=(40, 24), fps=4, kind="raw", codec="zstd", zstd_level=3)
    names = lambda a: [c.to_dict()["name"] for c in a.metadata.codecs[0].codecs]  # noqa: E731
    assert names(lz4) == ["bytes", "blosc", "crc32c"] and names(zstd) == ["bytes", "zstd", "crc32c"]
    assert zstd.metadata.codecs[0].codecs[1].level == 3
    # an existing array keeps its codecs
    assert names(layout.ensure_frames_array(root, "raw/b", dtype="<u2", shape=(40, 24), fps=4, kind="raw")) == names(zstd)


_HEAP = r"""
import sys
import numpy as np
from radflow.store.shards import keep_freed_heap

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "keep":
    assert keep_freed_heap(256 * 2**20)
before = resident()
block = np.ones(96 * 2**20, dtype=np.uint8)  # a shard's worth, touched
del block
print((resident() - before) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_shard_writing_process_keeps_its_freed_buffers_for_the_next_shard(tmp_path):
    script = tmp_path / "heap.py"
    script.write_text(_HEAP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    kept, returned = (int(subprocess.run([sys.executable, str(script), how], env=env, capture_output=True, text=True,
                                         check=True).stdout) for how in ("keep", "default"))
    assert kept >= 90  # the freed block stays, for the next one to reuse without faulting in fresh pages
    assert returned < 10  # glibc's default: a block this large is its own mapping, returned when freed


@pytest.mark.parametrize("codec", layout.RAW_CODECS)
def test_the_shard_reader_reads_the_frames_zarr_reads(tmp_path, codec):
    from radflow.store.shards import ShardReader

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = _array(root, "a", layout.raw_compressors(codec), n=12)
    frames = np.random.default_rng(4).integers(0, 4096, (7, 40, 24), dtype=np.uint16)
    writer = ShardWriter(arr, 4)  # shards 1 and 2 (part-filled); shard 0 never written
    writer.add(frames)
    writer.flush()
    reader = ShardReader(arr)
    assert reader._steps is not None  # read directly, not through Zarr
    for pos in (10, 4, 5, 9, 6, 7, 8):  # any order, shards revisited
        got = reader.frame(pos)
        assert got.dtype == arr.dtype and got.shape == (40, 24)
        np.testing.assert_array_equal(got, arr[pos])
        np.testing.assert_array_equal(got, frames[pos - 4])
    for missing in (0, 3, 11):  # a shard never written; a slot of a written shard never filled
        with pytest.raises(MissingChunkError):
            reader.frame(missing)


def test_the_shard_reader_finds_a_flipped_byte_in_a_frame_or_in_the_index(tmp_path):
    from radflow.store.shards import ShardReader

    arr = _written(tmp_path, "blosc-lz4", 8, seed=5)
    for shard, at in ((0, 10), (1, -8)):  # inside the first frame's bytes; inside the index
        _flip(tmp_path, shard, at)
        with pytest.raises(ValueError, match="(?i)checksum|crc"):
            ShardReader(arr).frame(shard * 4)


def test_the_shard_reader_reads_a_versioned_store_and_other_layouts(tmp_path):
    import icechunk as ic

    from radflow.store.shards import ShardReader

    frames = np.random.default_rng(6).integers(0, 4096, (4, 40, 24), dtype=np.uint16)
    session = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo"))).writable_session("main")
    arr = _array(zarr.open_group(session.store, mode="w"), "a", layout.raw_compressors("zstd"))
    writer = ShardWriter(arr, 0)
    writer.add(frames)
    writer.flush()
    session.commit("frames")
    reader = ShardReader(arr)
    assert reader._steps is not None
    np.testing.assert_array_equal(np.stack([reader.frame(i) for i in range(4)]), frames)
    with pytest.raises(MissingChunkError):
        reader.frame(5)

    plain = _array(zarr.open_group(str(tmp_path / "p.zarr"), mode="w"), "a", layout.raw_compressors("zstd"), sharded=False)
    plain[2:6] = frames  # one object per frame: read through Zarr
    reader = ShardReader(plain)
    assert reader._steps is None
    np.testing.assert_array_equal(reader.frame(3), frames[1])
    with pytest.raises(MissingChunkError):
        reader.frame(0)
