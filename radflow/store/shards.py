"""Whole shards of a frames array, each frame encoded once as it arrives, and read back a frame at a time.

A batch of ingest owns a shard-aligned region of one ``raw/`` array (chunk = one frame). Writing it
through ``arr[lo:hi] = block`` costs a copy of every frame into the block, a fill-valued shard the
size of the whole region when the batch does not fill its last shard, a merge of the two, and the
encoding of every fill-valued frame of that shard; the compressed frames are then gathered into
one buffer. :class:`ShardWriter` encodes each frame with the array's own inner codecs, in the calling
thread, straight from the decoder's view, keeps the compressed frames only, and writes each shard as
one object: ``chunk bytes … index`` where the index is ``(offset, nbytes)`` per inner chunk as
little-endian ``uint64`` (``2**64 - 1`` twice for a chunk never written) followed by its CRC-32C — the
Zarr v3 ``sharding_indexed`` layout with its default index codecs at the end. A chunk's own CRC-32C
(the ``crc32c`` codec that ends radflow's inner codecs) is computed here and joined after the chunk
when the shard is assembled: Zarr's codec appends it by copying the compressed chunk once more.
Codecs without a synchronous encoder go through Zarr's codec pipeline; an array laid out otherwise is
written through Zarr, frames stacked as before. :class:`ShardReader` reads such shards the same way round:
each shard's index once, each frame's chunk by its byte range, decoded in the calling thread.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from typing import Any

import google_crc32c
import numpy as np
from zarr.core.buffer import cpu

from radflow.store.layout import missing_chunk, present_frames, shard_index, shard_key

__all__ = ["ShardWriter", "ShardReader", "keep_freed_heap"]

_EMPTY = np.uint64(2**64 - 1)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEPT = [0]  # the most freed heap this process keeps, as set here


def keep_freed_heap(nbytes: int) -> bool:
    """Let glibc serve allocations up to ``nbytes`` from its heap and keep up to ``nbytes`` of it free for
    the next ones rather than returning it to the system (Dask's workers trim at 64 KiB; radflow's local
    workers at 64 MiB, ``cluster.worker_env``): a writer's shard buffers and each input's file and frame
    buffers then reuse pages instead of faulting in fresh zeroed ones for every input and shard (measured in
    one process: 62 → 48 ms per radiograph). Only raised (a larger value from the environment,
    ``MALLOC_*_THRESHOLD_``, stays), and only in processes that write shards. False where the C library is
    not glibc."""
    if nbytes <= _KEPT[0]:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for param, env in ((_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"), (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_")):
        try:
            before = int(os.environ.get(env, "0"))
        except ValueError:
            before = 0
        ok = bool(mallopt(param, ctypes.c_int(min(max(int(nbytes), before), 2**31 - 1)))) and ok
    if ok:
        _KEPT[0] = nbytes
    return ok


def _direct_layout(arr) -> Any:
    """The array's sharding codec when this module can write its shards itself, else None."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codecs = getattr(arr.metadata, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    index_codecs = tuple(sharding.index_codecs)
    if (tuple(sharding.chunk_shape) != (1, *arr.shape[1:]) or sharding.index_location != ShardingCodecIndexLocation.end
            or len(index_codecs) != 2 or not isinstance(index_codecs[0], BytesCodec)
            or not isinstance(index_codecs[1], Crc32cCodec)
            or getattr(index_codecs[0].endian, "value", index_codecs[0].endian) not in ("little", None)):
        return None
    return sharding


def _ends_with_crc(sharding) -> bool:
    """Whether the inner codecs end with a ``crc32c`` codec (left to the writer, which appends it)."""
    from zarr.codecs import Crc32cCodec

    return bool(sharding.codecs) and isinstance(sharding.codecs[-1], Crc32cCodec)


def _inner_steps(codecs, spec) -> list[tuple[Any, Any]] | None:
    """``codecs`` as ``(codec, the spec it encodes under)``; None when one has no synchronous encoder."""
    steps = []
    for codec in codecs:
        if not hasattr(codec, "_encode_sync"):
            return None
        steps.append((codec, spec))
        spec = codec.resolve_metadata(spec)
    return steps


class _BytesBuffer(cpu.Buffer):
    """A Zarr buffer over ``data`` whose ``to_bytes`` hands ``data`` itself on (a store that wants bytes,
    as Icechunk's, would otherwise copy the whole shard once more)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(np.frombuffer(data, dtype=np.uint8))
        self._bytes = data

    def to_bytes(self) -> bytes:
        return self._bytes


def _chunk_spec(arr, sharding) -> Any:
    """The spec one inner chunk (one frame) is encoded under."""
    from zarr.core.buffer import default_buffer_prototype

    spec = arr.metadata.get_chunk_spec((0,) * arr.ndim, arr.config, default_buffer_prototype())
    return dataclasses.replace(spec, shape=tuple(sharding.chunk_shape))


class ShardReader:
    """Frames of a frames array (chunk = one frame), one at a time, as Zarr reads them but without its
    round trip per frame: each shard's index is read once (its CRC-32C checked before a frame is taken from
    it), each frame's chunk is fetched by its byte range and decoded by the array's own inner codecs (their
    checksum included) in the calling thread. Through Zarr a frame costs two requests (index, chunk) and the
    hand-offs of its event loop and decoder thread. Arrays laid out otherwise, or with a codec without a
    synchronous decoder, are read through Zarr. A frame whose chunk was never written raises
    :class:`~radflow.errors.MissingChunkError` (a recorded frame with no chunk is a damaged store, not a
    blank image)."""

    def __init__(self, arr) -> None:
        self.arr = arr
        self.shard_frames = int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
        self._indexes: dict[int, tuple[np.ndarray, bool] | None] = {}
        self._steps: list[tuple[Any, Any]] | None = None
        sharding = _direct_layout(arr)
        if sharding is not None:
            steps = _inner_steps(list(sharding.codecs), _chunk_spec(arr, sharding))
            self._steps = None if steps is None or any(not hasattr(c, "_decode_sync") for c, _ in steps) else steps

    def _index(self, shard: int) -> tuple[np.ndarray, bool] | None:
        if shard not in self._indexes:
            self._indexes[shard] = shard_index(self.arr, shard)
        return self._indexes[shard]

    def present(self, positions) -> np.ndarray:
        """:func:`~radflow.store.layout.present_frames` from the indexes this reader reads (and keeps)."""
        return present_frames(self.arr, positions, self._index)

    def frame(self, position: int) -> np.ndarray:
        """Frame ``position`` in the array's dtype and frame shape."""
        if self._steps is None:
            if not self.present([position])[0]:
                raise missing_chunk(self.arr, position)
            return np.asarray(self.arr[position])
        from zarr.abc.store import RangeByteRequest
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        shard, inner = divmod(int(position), self.shard_frames)
        found = self._index(shard)
        if found is None or int(found[0][inner, 1]) == int(_EMPTY):
            raise missing_chunk(self.arr, position)
        index, intact = found
        if not intact:
            raise ValueError(f"{shard_key(self.arr, shard)}: the shard index does not match its CRC-32C checksum")
        offset, nbytes = (int(v) for v in index[inner])
        buf = sync(self.arr.store_path.store.get(shard_key(self.arr, shard), default_buffer_prototype(),
                                                 RangeByteRequest(offset, offset + nbytes)))
        if buf is None:  # the shard went away since its index was read
            raise missing_chunk(self.arr, position)
        for codec, spec in reversed(self._steps):
            buf = codec._decode_sync(buf, spec)
        return buf.as_numpy_array().reshape(self.arr.shape[1:])  # (read-only where the decoder's buffer is)


class ShardWriter:
    """The frames of ``arr`` from ``position`` on (a shard boundary), added in order and written
    whole shards at a time by :meth:`flush`. Frames not added stay unwritten (they read as the
    fill value)."""

    def __init__(self, arr, position: int) -> None:
        self.arr = arr
        self.shard_frames = int(arr.shards[0]) if arr.shards else int(arr.chunks[0])
        if position % self.shard_frames:
            raise ValueError(f"position {position} is not on a shard boundary ({self.shard_frames} frames per shard)")
        self.position = position
        self.frame_shape = tuple(arr.shape[1:])
        self._sharding = _direct_layout(arr)
        keep_freed_heap(2 * self.shard_frames * arr.dtype.itemsize * int(np.prod(self.frame_shape)))  # a shard and the next
        self._chunks: list[Any] = []  # encoded inner chunks (direct) or frames (through Zarr), in order
        self._crcs: list[bytes] = []  # each encoded chunk's CRC-32C, when the writer appends it
        self._steps: list[tuple[Any, Any]] | None = None  # the inner codecs, run in this thread (None: Zarr's pipeline)
        self._own_crc = False
        if self._sharding is not None:
            self._spec = _chunk_spec(arr, self._sharding)  # one frame's chunk
            codecs = list(self._sharding.codecs)
            own_crc = _ends_with_crc(self._sharding)
            self._steps = _inner_steps(codecs[:-1] if own_crc else codecs, self._spec)
            self._own_crc = own_crc and self._steps is not None
        self.encode_seconds = 0.0  # spent encoding (compression and checksums of the inner chunks)
        self.write_seconds = 0.0  # spent joining and writing shards

    @property
    def frames(self) -> int:
        return len(self._chunks)

    def add(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (``(n, *frame_shape)`` in the array's dtype) as the next ``n`` frames."""
        if tuple(frames.shape[1:]) != self.frame_shape or frames.dtype != self.arr.dtype:
            raise ValueError(f"frames {frames.shape} {frames.dtype} do not fit {self.arr.path} {self.frame_shape} {self.arr.dtype}")
        t0 = time.perf_counter()
        try:
            self._add(frames)
        finally:
            self.encode_seconds += time.perf_counter() - t0

    def _add(self, frames: np.ndarray) -> None:
        if self._sharding is None:
            self._chunks += [np.array(f) for f in frames]  # own copies: written through Zarr at flush
            return
        from zarr.core.buffer.cpu import NDBuffer

        chunks = [NDBuffer.from_numpy_array(np.ascontiguousarray(f)[None]) for f in frames]
        if self._steps is None:
            from zarr.core.sync import sync

            encoded = sync(self._sharding.codec_pipeline.encode([(c, self._spec) for c in chunks]))
        else:
            encoded = []
            for buf in chunks:
                for codec, spec in self._steps:
                    buf = None if buf is None else codec._encode_sync(buf, spec)
                encoded.append(buf)
        for buf in encoded:
            data = buf.as_numpy_array() if buf is not None else np.zeros(0, np.uint8)
            self._chunks.append(data)
            if self._own_crc:
                self._crcs.append(google_crc32c.value(data).to_bytes(4, "little") if data.nbytes else b"")

    def flush(self) -> None:
        """Write every shard that holds an added frame, each as one object (a shard written before
        by the same plan is replaced whole)."""
        t0 = time.perf_counter()
        try:
            self._flush()
        finally:
            self.write_seconds += time.perf_counter() - t0

    def _flush(self) -> None:
        if not self._chunks:
            return
        if self._sharding is None:
            self.arr[self.position : self.position + len(self._chunks)] = np.stack(self._chunks)
            self._chunks = []
            return
        from zarr.core.sync import sync

        store = self.arr.store_path.store
        writes = []
        crcs = self._crcs or [b""] * len(self._chunks)
        for lo in range(0, len(self._chunks), self.shard_frames):
            part = self._chunks[lo : lo + self.shard_frames]
            tails = crcs[lo : lo + self.shard_frames]
            index = np.full((self.shard_frames, 2), _EMPTY, dtype="<u8")
            lengths = np.array([c.nbytes + len(t) for c, t in zip(part, tails)], dtype="<u8")
            index[: len(part), 0] = np.cumsum(lengths) - lengths  # each chunk's offset: the lengths before it
            index[: len(part), 1] = lengths
            index[: len(part)][lengths == 0] = _EMPTY  # (a chunk its codecs encoded to nothing: not written)
            # one copy: the chunks (each followed by its CRC-32C) joined straight into the bytes the store writes
            body = b"".join([*(b for pair in zip(part, tails) for b in pair), index.tobytes(),
                             google_crc32c.value(index.tobytes()).to_bytes(4, "little")])
            writes.append(store.set(shard_key(self.arr, (self.position + lo) // self.shard_frames), _BytesBuffer(body)))
        self._chunks, self._crcs = [], []

        async def all_writes() -> None:
            import asyncio

            await asyncio.gather(*writes)

        sync(all_writes())
