"""The Zarr layout of a radflow store (format versions 1 and 2).

::

    store.zarr/                       root group; attrs["radflow"] = format, versions, source, key
      raw/<dtype>_<H>x<W>[x<C>]       (n, H, W[, C]) padded canvases, chunk = 1 frame, sharded
      images                          (N, canvas, canvas) analysis-ready frames, chunk = infer batch
      tables/<name>/part-*.parquet    Parquet datasets (see :mod:`radflow.store.tables`)

Frames of similar size share one ``raw`` array: the canvas is the frame size rounded
up to a size class, so padding stays small and the number of arrays stays bounded.
A shard holds ``frames_per_shard`` frames (target ~``shard_target_mib``); an ingest
batch always starts at a shard boundary, so each shard has exactly one writer.

Format 2 is the same hierarchy inside an Icechunk repository (``<store>/repo``), one version per
commit, with each table's parts listed as nodes ``tables/<name>/<part>`` (see
:mod:`radflow.store.versions`); format 1 is the hierarchy at the URL itself.
"""

from __future__ import annotations

import datetime as _dt
import math
import zlib
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from radflow.errors import MissingChunkError, StoreFormatError, StoreNotFoundError

__all__ = [
    "AcquisitionKind", "KINDS", "kind_of_array", "reference_path", "frame_crc32", "frame_checksum_of",
    "FRAME_CHECKSUM",
    "FORMAT_VERSION", "FORMATS", "is_versioned_store",
    "size_class",
    "raw_array_name",
    "frames_per_shard",
    "create_root",
    "open_root",
    "ensure_frames_array",
    "ensure_images_array",
    "chunk_present",
    "present_frames",
    "shard_key",
    "shard_index",
    "missing_chunk",
]

FORMAT_VERSION = 2
FORMATS = (1, 2)  # format 1 is read and written as before, until `radflow migrate` makes it format 2
_SHARD_INDEX_ENTRY = 16  # (offset uint64, nbytes uint64) per inner chunk
_EMPTY = 2**64 - 1


def size_class(n: int) -> int:
    """Canvas side for a frame side of ``n`` pixels.

    Powers of two up to 256, then multiples of 256: at most 1/4 padding along an
    axis below 256 and at most 255 px (< 9 % at 3000 px) above.
    """
    if n <= 0:
        raise ValueError(f"frame side must be positive, got {n}")
    if n <= 256:
        return max(16, 1 << (n - 1).bit_length())
    return int(math.ceil(n / 256) * 256)


def raw_array_name(dtype: str, rows: int, cols: int, samples: int) -> str:
    """Name of the ``raw`` array that holds frames of this dtype, size and channels."""
    dt = np.dtype(dtype).name
    name = f"{dt}_{size_class(rows)}x{size_class(cols)}"
    return name if samples == 1 else f"{name}x{samples}"


def frames_per_shard(frame_bytes: int, target_mib: int) -> int:
    """Frames per shard so that one shard object is about ``target_mib`` uncompressed."""
    return int(max(1, min(1024, (target_mib * 2**20) // max(1, frame_bytes))))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _new_group(zstore) -> zarr.Group:
    """A new root group; the location may hold the writer's lock object and nothing else."""
    from zarr.core.sync import sync

    from radflow.store.lock import LOCK_NAME

    try:
        return zarr.open_group(zstore, mode="w-", zarr_format=3)
    except FileExistsError:
        async def keys() -> list[str]:
            return [k async for k in zstore.list()]

        found = sync(keys())
        if set(found) - {LOCK_NAME}:
            raise
    return zarr.open_group(zstore, mode="a", zarr_format=3)  # only the lock there, held by this run


def create_root(zstore, *, source: str, key_fingerprint: str, radflow_version: str,
                privacy: dict[str, Any] | None = None) -> zarr.Group:
    """Create (or re-open) the store's root group and check it is a compatible radflow store.

    ``privacy`` (the de-identification evidence, see :mod:`radflow.dicom.deid`) is recorded at
    creation; a later run with another privacy mode or source-path policy is refused, so one
    store never mixes de-identified and identified values.
    """
    try:
        root = zarr.open_group(zstore, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        root = None
    if root is None:
        versioned = is_versioned_store(zstore)
        root = _new_group(zstore)
        if versioned:
            from radflow.store.tables import TABLES

            for name in TABLES:  # made once here: two writers' forks never both create them
                root.require_group(f"tables/{name}")
        root.attrs["radflow"] = {
            "format_version": 2 if versioned else 1,
            "radflow_version": radflow_version,
            "created": _now(),
            "source": source,
            "key_fingerprint": key_fingerprint,
            "next_index": 0,
            "frame_checksum": FRAME_CHECKSUM,
        }
        if privacy is not None:
            root.attrs["privacy"] = privacy
        return root
    meta = _check(root)
    if privacy is not None:
        recorded = dict(root.attrs.get("privacy") or {})
        for field in ("mode", "source_paths", "dates"):
            if recorded.get(field) != privacy.get(field):
                raise StoreFormatError(
                    f"the store was written with privacy {field}={recorded.get(field)!r}; this run asks for "
                    f"{privacy.get(field)!r}. Use the store's setting (RADFLOW_PRIVACY__...) or a new store")
    if meta.get("key_fingerprint") != key_fingerprint:
        raise StoreFormatError(
            "the store was written with a different pseudonymization key; set RADFLOW_SECRET_KEY "
            "(or RADFLOW_KEY_FILE) to the key used before, so patient keys and UIDs stay consistent"
        )
    return root


def is_versioned_store(zstore) -> bool:
    """Whether a Zarr store is a session of a versioned (format 2) store."""
    return type(getattr(zstore, "_store", zstore)).__name__ == "IcechunkStore"


def _check(root: zarr.Group) -> dict[str, Any]:
    meta = dict(root.attrs.get("radflow") or {})
    if not meta:
        raise StoreFormatError(f"{root.store} is a Zarr group but not a radflow store (no 'radflow' attribute)")
    if meta.get("format_version") not in FORMATS:
        raise StoreFormatError(
            f"store format version {meta.get('format_version')} is not one of {FORMATS}; "
            "use a radflow release that reads it"
        )
    return meta


def open_root(zstore, *, mode: str = "r") -> zarr.Group:
    """Open an existing radflow store's root group."""
    try:
        root = zarr.open_group(zstore, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreNotFoundError(f"no radflow store at {zstore}; create one with `radflow ingest SOURCE STORE`") from None
    _check(root)
    return root


def update_meta(root: zarr.Group, **changes: Any) -> None:
    meta = dict(root.attrs["radflow"])
    meta.update(changes)
    root.attrs["radflow"] = meta


#: lossless codecs of new ``raw/`` (and acquisition) arrays, by the name of the ``raw_codec`` setting. Bit-shuffled
#: LZ4 (Blosc) encodes 16-bit radiographs about twice as fast as zstd-1 and decodes them about twice as fast, to
#: fewer bytes (real vendor radiographs from ``pydicom-data``: 1.97× smaller than raw against 1.60×, encode
#: 1,034 vs 468 MB/s, decode 2,022 vs 959 MB/s, one thread); zstd stays for stores that want its level dial.
RAW_CODECS = ("blosc-lz4", "zstd")


def raw_compressors(codec: str, zstd_level: int = 1) -> list:
    """The compressors (then Zarr's CRC-32C) of a new frames array."""
    if codec == "blosc-lz4":
        first = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    elif codec == "zstd":
        first = ZstdCodec(level=zstd_level)
    else:
        raise StoreFormatError(f"unknown raw codec {codec!r} (one of {', '.join(RAW_CODECS)})")
    return [first, Crc32cCodec()]


def ensure_frames_array(
    root: zarr.Group, path: str, *, dtype: str, shape: tuple[int, ...], fps: int, kind: str,
    dims: tuple[str, ...] | None = None, codec: str = "blosc-lz4", zstd_level: int = 1,
) -> zarr.Array:
    """Create ``path`` as an ``(n, *shape)`` array (chunk = one frame, ``fps`` frames per shard) if absent,
    compressed by ``codec`` (:data:`RAW_CODECS`); an existing array keeps the codecs it was created with."""
    try:
        return root[path]
    except KeyError:
        pass
    if dims is None:
        dims = ("frame", "y", "x", "channel")[: 1 + len(shape)]
    return root.create_array(
        path,
        shape=(0, *shape),
        chunks=(1, *shape),
        shards=(fps, *shape),
        dtype=np.dtype(dtype),
        compressors=raw_compressors(codec, zstd_level),
        fill_value=0,
        dimension_names=dims,
        attributes={"frames_per_shard": fps, "kind": kind},
    )


def ensure_images_array(root: zarr.Group, *, n: int, canvas: int, dtype: str, chunk_frames: int, shard_frames: int) -> zarr.Array:
    """Create or grow ``images`` to ``n`` frames; refuse a canvas or dtype change."""
    try:
        arr = root["images"]
    except KeyError:
        arr = root.create_array(
            "images",
            shape=(n, canvas, canvas),
            chunks=(chunk_frames, canvas, canvas),
            shards=(shard_frames, canvas, canvas),
            dtype=np.dtype(dtype),
            compressors=[ZstdCodec(level=1), Crc32cCodec()],
            fill_value=0,
            dimension_names=("frame", "y", "x"),
            attributes={"canvas": canvas, "kind": "images"},
        )
        return arr
    if arr.shape[1:] != (canvas, canvas) or arr.dtype != np.dtype(dtype):
        raise StoreFormatError(
            f"images is {arr.shape[1]}x{arr.shape[2]} {arr.dtype}, asked for {canvas}x{canvas} {dtype}; "
            "delete the 'images' array to preprocess at another canvas"
        )
    if arr.shape[0] < n:
        arr.resize((n, canvas, canvas))
    return arr


def shard_key(arr: zarr.Array, shard: int) -> str:
    """The store key of shard ``shard`` (along the first axis) of ``arr``, in the array's chunk key encoding."""
    key = arr.metadata.encode_chunk_key((int(shard),) + (0,) * (arr.ndim - 1))
    prefix = arr.store_path.path
    return f"{prefix}/{key}" if prefix else key


def shard_index(arr: zarr.Array, shard: int) -> tuple[np.ndarray, bool] | None:
    """Shard ``shard``'s index, ``(offset, nbytes)`` per inner chunk as ``uint64`` (``2**64 - 1`` twice for a
    chunk never written), read alone from the end of the shard object, and whether it matches its own
    CRC-32C; ``None`` when the object does not exist."""
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    shard_frames = arr.shards[0] if arr.shards else arr.chunks[0]
    n_inner = shard_frames // arr.chunks[0]
    try:
        buf = sync(arr.store_path.store.get(shard_key(arr, shard), default_buffer_prototype(),
                                            SuffixByteRequest(n_inner * _SHARD_INDEX_ENTRY + 4)))
    except Exception as exc:  # a versioned store whose version lists a shard object storage no longer has
        if "not found" not in str(exc).lower():
            raise
        buf = None
    if buf is None:
        return None
    data = buf.to_bytes()
    intact = google_crc32c.value(data[:-4]).to_bytes(4, "little") == data[-4:]
    return np.frombuffer(data[:-4], dtype="<u8").reshape(n_inner, 2), intact


def present_frames(arr: zarr.Array, positions: np.ndarray, index_of=None) -> np.ndarray:
    """Whether the inner chunk of each frame position was written, reading each shard's index once
    (``index_of(shard)``: :func:`shard_index`'s answer from elsewhere, a reader's cached one)."""
    index_of = index_of or (lambda shard: shard_index(arr, shard))
    positions = np.asarray(positions, dtype=np.int64)
    shard_frames = arr.shards[0] if arr.shards else arr.chunks[0]
    out = np.zeros(len(positions), bool)
    for shard in np.unique(positions // shard_frames):
        found = index_of(int(shard))
        if found is None:
            continue
        index = found[0]
        sel = positions // shard_frames == shard
        inner = (positions[sel] % shard_frames) // arr.chunks[0]
        out[sel] = ~((index[inner, 0] == _EMPTY) & (index[inner, 1] == _EMPTY))
    return out


def chunk_present(arr: zarr.Array, frame: int) -> bool:
    """Whether the inner chunk holding ``frame`` was written (reads only the shard index)."""
    return bool(present_frames(arr, np.array([frame]))[0])


def missing_chunk(arr: zarr.Array, frame: int) -> MissingChunkError:
    """The error for a frame recorded as written whose chunk the store does not have."""
    return MissingChunkError(f"frame {frame} of {arr.path!r} is recorded as written but its chunk is missing from "
                             "the store; run `radflow verify` and re-ingest the affected batch")


def require_chunk(arr: zarr.Array, frame: int) -> None:
    if not chunk_present(arr, frame):
        raise missing_chunk(arr, frame)


# -- raw acquisitions (k-space, sinograms) ---------------------------------------------


@dataclass(frozen=True)
class AcquisitionKind:
    kind: str  # batch kind and ledger/table vocabulary
    dataset: str  # HDF5 dataset holding the slices
    reference: str  # HDF5 dataset holding reference images
    group: str  # Zarr group of the arrays
    table: str  # Parquet table with one row per slice
    index_col: str  # global slice index column
    meta_key: str  # root attribute with the next free index
    dtype: str


KINDS = {
    "kspace": AcquisitionKind("kspace", "kspace", "reconstruction_rss", "kspace", "kspace", "kspace_index",
                              "next_kspace_index", "<c8"),
    "sinogram": AcquisitionKind("sinogram", "sinogram", "reference", "sinograms", "sinograms", "sinogram_index",
                                "next_sinogram_index", "<f4"),
}


def kind_of_array(path: str) -> AcquisitionKind:
    group = path.split("/", 1)[0]
    return next(k for k in KINDS.values() if k.group == group)


def reference_path(array_path: str) -> str:
    return "reference/" + array_path.split("/", 1)[1]


#: the frame checksum new stores record (root attribute ``radflow.frame_checksum``); stores that do not
#: name one hold zlib's CRC-32. CRC-32C is computed in hardware (SSE4.2 / ARMv8 CRC) by ``google-crc32c``,
#: the library Zarr's own ``crc32c`` codec uses: about 5× zlib's CRC-32 on the same frames.
FRAME_CHECKSUM = "crc32c"
_CHECKSUMS = {"crc32": lambda data: zlib.crc32(data) & 0xFFFFFFFF, "crc32c": lambda data: int(google_crc32c.value(data))}


def frame_crc32(frame: np.ndarray, algorithm: str) -> int:
    """The checksum of a frame's native-size pixels in C order and native byte order (a big-endian
    frame gives the checksum of its values, not of its bytes): what ``instances.crc32`` records and
    verify checks. ``algorithm``: ``"crc32"`` (zlib) or ``"crc32c"`` (Castagnoli), as the store says
    (:func:`frame_checksum_of`)."""
    try:
        checksum = _CHECKSUMS[algorithm]
    except KeyError:
        raise StoreFormatError(f"unknown frame checksum {algorithm!r} (this radflow knows crc32 and crc32c)") from None
    native = np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))
    return checksum(native.view(np.uint8).reshape(-1))


def frame_checksum_of(root: zarr.Group) -> str:
    """The frame checksum a store records (``crc32`` for stores that name none)."""
    return str((root.attrs.get("radflow") or {}).get("frame_checksum", "crc32"))
