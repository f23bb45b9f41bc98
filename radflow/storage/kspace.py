"""fastMRI-format HDF5 k-space files: header index and batch writing into ``kspace/`` arrays.

A file holds ``kspace`` ``(slices, coils, ky, kx)`` complex, optionally the
``reconstruction_rss`` reference ``(slices, h, w)`` and an ISMRMRD XML header. Slices
go to ``kspace/c<coils>_<ky>x<kx>[_r<h>x<w>]`` (chunk = one slice) and references to
the array of the same name under ``reference/``; one ``kspace`` table row per slice.
The file's ``patient_id`` attribute is pseudonymized like DICOM identifiers.
"""

from __future__ import annotations

import hashlib
import io
import time
import xml.etree.ElementTree as ET
from typing import Any, BinaryIO

import numpy as np

from radflow.config import Limits
from radflow.errors import InputRejected, Reason
from radflow.storage import layout
from radflow.storage.pseudonym import keyed_hash
from radflow.storage.sources import read_bytes
from radflow.storage.tables import write_part
from radflow.storage.urls import zarr_store

__all__ = ["HDF5_SIGNATURE", "kspace_index_row", "kspace_array_name", "write_kspace_batch", "reference_path"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def kspace_array_name(coils: int, ky: int, kx: int, ref: tuple[int, ...]) -> str:
    name = f"kspace/c{coils}_{ky}x{kx}"
    return f"{name}_r{ref[0]}x{ref[1]}" if ref else name


def reference_path(kspace_path: str) -> str:
    return "reference/" + kspace_path.split("/", 1)[1]


def _open(src: BinaryIO | bytes):
    import h5py

    try:
        return h5py.File(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, "r")
    except OSError:
        raise InputRejected(Reason.TRUNCATED, "HDF5 file cannot be opened (truncated or corrupt)") from None


def _describe(h5, limits: Limits) -> dict[str, Any]:
    if "kspace" not in h5:
        raise InputRejected(Reason.NON_IMAGE, "HDF5 file has no 'kspace' dataset (not fastMRI format)")
    ds = h5["kspace"]
    if ds.ndim == 3:  # single-coil: (slices, ky, kx)
        slices, ky, kx = ds.shape
        coils = 1
    elif ds.ndim == 4:
        slices, coils, ky, kx = ds.shape
    else:
        raise InputRejected(Reason.DECODE_ERROR, f"'kspace' has {ds.ndim} dimensions; expected 3 or 4")
    if coils * ky * kx > limits.max_frame_pixels or slices > limits.max_frames:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"k-space {slices}x{coils}x{ky}x{kx} exceeds limits")
    ref: tuple[int, ...] = ()
    if "reconstruction_rss" in h5 and h5["reconstruction_rss"].ndim == 3 and h5["reconstruction_rss"].shape[0] == slices:
        ref = tuple(int(v) for v in h5["reconstruction_rss"].shape[1:])
    return {"slices": int(slices), "coils": int(coils), "ky": int(ky), "kx": int(kx), "ref": ref}


def kspace_index_row(fh: BinaryIO, limits: Limits) -> dict[str, Any]:
    """Index fields for a fastMRI file (reads metadata only)."""
    with _open(fh) as h5:
        d = _describe(h5, limits)
    return {
        "kind": "kspace",
        "array": kspace_array_name(d["coils"], d["ky"], d["kx"], d["ref"]),
        "shape": [d["coils"], d["ky"], d["kx"]],
        "ref_shape": list(d["ref"]),
        "dtype": "<c8",
        "frames": d["slices"],
    }


def _header_fields(h5) -> dict[str, Any]:
    out = {"acquisition": str(h5.attrs.get("acquisition", "")), "field_strength_t": float("nan")}
    if "ismrmrd_header" in h5:
        try:
            root = ET.fromstring(bytes(h5["ismrmrd_header"][()]))
            for el in root.iter():
                if el.tag.endswith("systemFieldStrength_T") and el.text:
                    out["field_strength_t"] = float(el.text)
        except (ET.ParseError, ValueError):
            pass
    return out


def write_kspace_batch(store_url: str, plan, *, secret: bytes, limits: Limits, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every slice of a batch of fastMRI files (one shard region); never raises per input."""
    from radflow.storage.batches import batch_summary, ledger_row

    t_start = time.perf_counter()
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r+")
    arr = root[plan.array].with_config({"write_empty_chunks": True})
    ref_arr = root[reference_path(plan.array)].with_config({"write_empty_chunks": True}) if plan.ref_shape else None
    block = np.zeros((plan.planned_frames, *plan.shape), np.complex64)
    ref_block = np.zeros((plan.planned_frames, *plan.ref_shape), np.float32) if ref_arr is not None else None
    ledger: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    used = bytes_in = 0
    for item in plan.inputs:
        t0 = time.perf_counter()
        sha = ""
        try:
            data = read_bytes(item.uri, storage_options, max_bytes=limits.max_file_bytes)
            bytes_in += len(data)
            sha = hashlib.sha256(data).hexdigest()
            with _open(data) as h5:
                d = _describe(h5, limits)
                if kspace_array_name(d["coils"], d["ky"], d["kx"], d["ref"]) != plan.array or used + d["slices"] > plan.planned_frames:
                    raise InputRejected(Reason.IO_ERROR, "input changed between indexing and writing; run ingest again")
                k = np.asarray(h5["kspace"][()], dtype=np.complex64).reshape(d["slices"], d["coils"], d["ky"], d["kx"])
                ref = np.asarray(h5["reconstruction_rss"][()], np.float32) if d["ref"] else None
                info = _header_fields(h5)
                patient = keyed_hash(secret, str(h5.attrs.get("patient_id", "")), purpose="patient")
            n = d["slices"]
            block[used : used + n] = k
            if ref is not None and ref_block is not None:
                ref_block[used : used + n] = ref
            for s in range(n):
                rows.append({
                    "kspace_index": plan.index + used + s, "source": item.uri, "slice": s, "array": plan.array,
                    "position": plan.position + used + s, "coils": d["coils"], "ky": d["ky"], "kx": d["kx"],
                    "ref_rows": d["ref"][0] if d["ref"] else 0, "ref_cols": d["ref"][1] if d["ref"] else 0,
                    "patient_key": patient, "batch": plan.batch_id, **info,
                })
            used += n
            ledger.append(ledger_row(item.uri, item.size, item.version, status="ok", sha256=sha, frames=n,
                                     batch=plan.batch_id, seconds=time.perf_counter() - t0))
        except InputRejected as exc:
            ledger.append(ledger_row(item.uri, item.size, item.version, status="rejected", reason=exc.reason,
                                     detail=exc.detail, sha256=sha, batch=plan.batch_id, seconds=time.perf_counter() - t0))
        except Exception as exc:  # a bad file never fails the batch
            ledger.append(ledger_row(item.uri, item.size, item.version, status="rejected", reason=Reason.DECODE_ERROR,
                                     detail=f"unexpected {type(exc).__name__} while reading k-space", sha256=sha,
                                     batch=plan.batch_id, seconds=time.perf_counter() - t0))
    t_write = time.perf_counter()
    if used:
        arr[plan.position : plan.position + used] = block[:used]
        if ref_arr is not None and ref_block is not None:
            ref_arr[plan.position : plan.position + used] = ref_block[:used]
    write_seconds = time.perf_counter() - t_write
    if rows:
        write_part(store_url, "kspace", plan.batch_id, rows, storage_options=storage_options)
    write_part(store_url, "ledger", plan.batch_id, ledger, storage_options=storage_options)
    return batch_summary(plan, ledger, used, bytes_in, int(block[:used].nbytes), write_seconds, t_start)
