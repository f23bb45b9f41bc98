"""Raw acquisition files in HDF5: fastMRI k-space and CT sinograms.

* fastMRI ``multicoil``/``singlecoil`` files: ``kspace`` ``(slices, coils, ky, kx)`` (or
  ``(slices, ky, kx)``) complex, optional ``reconstruction_rss`` ``(slices, h, w)``, an
  ISMRMRD XML header and a ``patient_id`` attribute.
* Sinogram files (radflow's format): ``sinogram`` ``(slices, n_detectors, n_angles)``
  float, ``theta`` ``(n_angles,)`` in degrees, optional ``reference`` ``(slices, h, w)``.

Slices go to ``kspace/c<coils>_<ky>x<kx>[_r<h>x<w>]`` or
``sinograms/d<n_det>_a<n_angles>_t<theta digest>[_r<h>x<w>]`` (chunk = one slice),
references to the array of the same name under ``reference/``, and one row per slice
to the ``kspace`` or ``sinograms`` table. Identifying attributes are pseudonymized.
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
from radflow.store import layout
from radflow.store.layout import KINDS, AcquisitionKind, frame_crc32, kind_of_array, reference_path
from radflow.ingest.batches import Clock, batch_summary, each_input
from radflow.dicom.pseudonym import keyed_hash
from radflow.store.tables import write_part
from radflow.store.urls import zarr_store

__all__ = ["HDF5_SIGNATURE", "KINDS", "AcquisitionKind", "acquisition_index_row", "write_acquisition_batch",
           "reference_path", "kind_of_array"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _open(src: BinaryIO | bytes):
    import h5py

    try:
        return h5py.File(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, "r")
    except OSError:
        raise InputRejected(Reason.TRUNCATED, "HDF5 file cannot be opened (truncated or corrupt)") from None


def _describe(h5, limits: Limits) -> dict[str, Any]:
    """Kind, slice count, per-slice shape, reference shape, array name and array attributes."""
    if "kspace" in h5:
        kind = KINDS["kspace"]
        ds = h5["kspace"]
        if ds.ndim == 3:
            slices, ky, kx = ds.shape
            coils = 1
        elif ds.ndim == 4:
            slices, coils, ky, kx = ds.shape
        else:
            raise InputRejected(Reason.DECODE_ERROR, f"'kspace' has {ds.ndim} dimensions; expected 3 or 4")
        shape: tuple[int, ...] = (int(coils), int(ky), int(kx))
        name = f"c{coils}_{ky}x{kx}"
        attrs: dict[str, Any] = {}
    elif "sinogram" in h5:
        kind = KINDS["sinogram"]
        ds = h5["sinogram"]
        if ds.ndim != 3 or "theta" not in h5:
            raise InputRejected(Reason.DECODE_ERROR, "'sinogram' must be (slices, detectors, angles) with a 'theta' dataset")
        slices, n_det, n_ang = ds.shape
        theta = np.asarray(h5["theta"][()], np.float64)
        if theta.shape != (n_ang,):
            raise InputRejected(Reason.DECODE_ERROR, f"'theta' has {theta.shape} values for {n_ang} angles")
        shape = (int(n_det), int(n_ang))
        name = f"d{n_det}_a{n_ang}_t{hashlib.sha256(theta.tobytes()).hexdigest()[:8]}"
        attrs = {"theta": theta.tolist()}
    else:
        raise InputRejected(Reason.NON_IMAGE, "HDF5 file has neither a 'kspace' nor a 'sinogram' dataset")
    if int(np.prod(shape)) > limits.max_frame_pixels or slices > limits.max_frames:
        raise InputRejected(Reason.DIMENSION_LIMIT, f"{kind.kind} {slices}x{'x'.join(map(str, shape))} exceeds limits")
    ref: tuple[int, ...] = ()
    if kind.reference in h5 and h5[kind.reference].ndim == 3 and h5[kind.reference].shape[0] == slices:
        ref = tuple(int(v) for v in h5[kind.reference].shape[1:])
        name += f"_r{ref[0]}x{ref[1]}"
    return {"kind": kind, "slices": int(slices), "shape": shape, "ref": ref, "array": f"{kind.group}/{name}",
            "attrs": attrs}


def acquisition_index_row(fh: BinaryIO, limits: Limits) -> dict[str, Any]:
    """Index fields for an HDF5 acquisition file (reads metadata only)."""
    with _open(fh) as h5:
        d = _describe(h5, limits)
    return {"kind": d["kind"].kind, "array": d["array"], "shape": list(d["shape"]), "ref_shape": list(d["ref"]),
            "dtype": d["kind"].dtype, "frames": d["slices"], "array_attrs": d["attrs"]}


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


def write_acquisition_batch(store_url: str, plan, *, secret: bytes, limits: Limits,
                            storage_options: dict[str, Any] | None = None, lost: tuple = ()) -> dict[str, Any]:
    """Write every slice of a batch of HDF5 acquisition files (one shard region); never raises per input."""
    t_start = time.perf_counter()
    kind = KINDS[plan.kind]
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r+")
    arr = root[plan.array].with_config({"write_empty_chunks": True})
    checksum = layout.frame_checksum_of(root)
    ref_arr = root[reference_path(plan.array)].with_config({"write_empty_chunks": True}) if plan.ref_shape else None
    block = np.zeros((plan.planned_frames, *plan.shape), np.dtype(kind.dtype))
    ref_block = np.zeros((plan.planned_frames, *plan.ref_shape), np.float32) if ref_arr is not None else None
    rows: list[dict[str, Any]] = []
    used = 0
    clock = Clock()

    def store(item, data: bytes, anomalies: list[str]) -> int:
        nonlocal used
        with clock("decode"), _open(data) as h5:
            d = _describe(h5, limits)
            if d["array"] != plan.array or used + d["slices"] > plan.planned_frames:
                raise InputRejected(Reason.IO_ERROR, "input changed between indexing and writing; run ingest again")
            values = np.asarray(h5[kind.dataset][()], dtype=kind.dtype).reshape(d["slices"], *d["shape"])
            ref = np.asarray(h5[kind.reference][()], np.float32) if d["ref"] else None
            info = _header_fields(h5)
            patient = keyed_hash(secret, str(h5.attrs.get("patient_id", "")), purpose="patient")
        n = d["slices"]
        with clock("checksum"):
            crcs = [frame_crc32(v, checksum) for v in values]
        block[used : used + n] = values
        if ref is not None and ref_block is not None:
            ref_block[used : used + n] = ref
        for s in range(n):
            rows.append({
                kind.index_col: plan.index + used + s, "source": item.label, "slice": s, "array": plan.array,
                "position": plan.position + used + s, "shape": "x".join(map(str, d["shape"])),
                "ref_rows": d["ref"][0] if d["ref"] else 0, "ref_cols": d["ref"][1] if d["ref"] else 0,
                "patient_key": patient, "crc32": crcs[s], "batch": plan.batch_id, **info,
            })
        used += n
        return n

    ledger, bytes_in = each_input(plan, limits, storage_options, store, lost, clock)
    with clock("write"):
        if used:
            arr[plan.position : plan.position + used] = block[:used]
            if ref_arr is not None and ref_block is not None:
                ref_arr[plan.position : plan.position + used] = ref_block[:used]
    with clock("tables"):
        if rows:
            write_part(store_url, kind.table, plan.batch_id, rows, storage_options=storage_options)
        write_part(store_url, "ledger", plan.batch_id, ledger, storage_options=storage_options)
    return batch_summary(plan, ledger, used, bytes_in, int(block[:used].nbytes), t_start, clock)
