"""Ingest batches: planning (which inputs, which shard region) and writing one batch.

A batch owns one contiguous, shard-aligned region of one ``raw`` array and a
contiguous range of global frame indices, reserved at planning time by the single
planning process. Its worker decodes every input, assembles the region in memory,
writes it in one operation, then writes its own ``ledger`` and ``instances`` parts.
Names are pure functions of the plan, so a retried batch overwrites only its own
objects.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from radflow.config import Limits, PrivacySettings
from radflow.dicom.deid import deidentifier
from radflow.errors import Anomaly, InputRejected, Reason, SourceUnavailable, anomaly
from radflow.store import layout
from radflow.store.layout import frame_crc32
from radflow.store.shards import ShardWriter
from radflow.dicom.read import FALLBACK_DECODERS, Header, decode_frames, header_from_dataset, read_dataset
from radflow.dicom.pseudonym import keyed_hash, remap_uid
from radflow.ingest.dicomweb import ReadAhead
from radflow.ingest.sources import read_bytes
from radflow.store.tables import HEADERS_SCHEMA, INSTANCES_SCHEMA, LEDGER_SCHEMA, anomaly_counts, write_part
from radflow.store.urls import zarr_store
from radflow.watchdog import deadline

#: the phases of a batch's data path, in order (:class:`Clock`)
PHASES = ("read", "digest", "decode", "checksum", "compress", "write", "tables")


class Clock:
    """Seconds one batch spends in each phase of its data path, summed over its inputs: ``read``
    (bytes from the source), ``digest`` (the input's SHA-256), ``decode`` (header parse, pixel decode,
    de-identified header, masks, padding), ``checksum`` (each frame's CRC), ``compress`` (the chunks'
    codecs), ``write`` (shards to the store) and ``tables`` (the batch's table parts)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)


def lost_detail(reason: str, what: str = "decoding this input") -> str:
    """The ledger detail of an input left out because ``what`` killed or hung its worker."""
    happened = "killed the worker" if reason == Reason.WORKER_LOST.value else "ran past limits.input_timeout_s"
    return f"{what} {happened} every time it was tried alone"


__all__ = ["BatchInput", "BatchPlan", "Canvas", "plan_batches", "write_batch", "ledger_row", "batch_summary", "each_input", "probe_input", "lost_detail"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)  # one per planned input
class BatchInput:
    uri: str
    size: int
    version: str
    frames: int
    source: str = ""  # what tables record for it; "" records the URI

    @property
    def label(self) -> str:
        return self.source or self.uri


@dataclass(frozen=True)
class BatchPlan:
    """One batch: inputs of one kind, the region ``[position, position + capacity)`` of one
    array and the global indices ``[index, index + planned frames)`` it owns."""

    batch_id: str
    kind: str  # "dicom" (frames into raw/...), "kspace" or "sinogram" (slices into kspace/..., sinograms/...)
    array: str  # full array path, e.g. "raw/uint16_2560x2048" or "kspace/c4_384x384_r320x320"
    dtype: str
    shape: tuple[int, ...]  # one frame's canvas shape within the array
    ref_shape: tuple[int, ...]  # acquisitions only: reference image shape (empty if none)
    frames_per_shard: int
    position: int
    capacity: int
    index: int
    inputs: tuple[BatchInput, ...] = field(default_factory=tuple)
    array_attrs: dict[str, Any] = field(default_factory=dict, compare=False)  # set on the array when created

    @property
    def planned_frames(self) -> int:
        return sum(i.frames for i in self.inputs)


def _batch_id(array: str, position: int, index: int, inputs: Iterable[BatchInput]) -> str:
    h = hashlib.sha256(f"{array}\0{position}\0{index}".encode())
    for i in inputs:
        h.update(f"\0{i.uri}\0{i.size}\0{i.version}".encode())
    return h.hexdigest()[:16]


def plan_batches(
    entries: list[dict[str, Any]],
    *,
    next_position: dict[str, int],
    next_index: int,
    shard_target_mib: int,
    frames_per_shard: dict[str, int] | None = None,
    max_files_per_batch: int = 4096,
) -> tuple[list[BatchPlan], dict[str, int], int]:
    """Group indexed inputs into shard-owning batches.

    Parameters
    ----------
    entries
        Header-index rows of candidates of one kind: ``uri, size, version, kind, array,
        shape, ref_shape, dtype, frames``; taken in ``uri`` order.
    next_position
        First free (shard-aligned) position per existing array.
    next_index
        First free global index of this kind.
    frames_per_shard
        Shard size of existing arrays (new arrays get one from ``shard_target_mib``).

    Returns
    -------
    batches, new next positions per array, new next index.
    """
    fps_known = dict(frames_per_shard or {})
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(entries, key=lambda e: e["uri"]):
        groups.setdefault(e["array"], []).append(e)
    positions = dict(next_position)
    batches: list[BatchPlan] = []
    index = next_index
    for name in sorted(groups):
        group = groups[name]
        first = group[0]
        shape = tuple(int(v) for v in first["shape"])
        frame_bytes = int(np.prod(shape)) * np.dtype(first["dtype"]).itemsize
        fps = fps_known.get(name) or layout.frames_per_shard(frame_bytes, shard_target_mib)
        fps_known[name] = fps
        pos = positions.get(name, 0)
        current: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal pos, index, current
            if not current:
                return
            inputs = tuple(BatchInput(e["uri"], int(e["size"]), str(e["version"]), int(e["frames"]), e.get("source", "")) for e in current)
            frames = sum(i.frames for i in inputs)
            capacity = int(math.ceil(frames / fps) * fps)
            batches.append(
                BatchPlan(
                    batch_id=_batch_id(name, pos, index, inputs),
                    kind=str(first["kind"]),
                    array=name,
                    dtype=str(first["dtype"]),
                    shape=shape,
                    ref_shape=tuple(int(v) for v in first.get("ref_shape") or ()),
                    frames_per_shard=fps,
                    position=pos,
                    capacity=capacity,
                    index=index,
                    inputs=inputs,
                    array_attrs=dict(first.get("array_attrs") or {}),
                )
            )
            pos += capacity
            index += frames
            current = []

        filled = 0
        for e in group:
            f = int(e["frames"])
            if current and (filled + f > fps or len(current) >= max_files_per_batch):
                flush()
                filled = 0
            current.append(e)
            filled += f
        flush()
        positions[name] = pos
    return batches, positions, index


def ledger_row(
    uri: str, size: int, version: str, *, status: str, reason: Reason | None = None, detail: str = "",
    sha256: str = "", frames: int = 0, batch: str = "", seconds: float = 0.0, anomalies: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "source": uri,
        "size": int(size),
        "version": version,
        "sha256": sha256,
        "status": status,
        "reason": None if reason is None else Reason(reason).value,
        "detail": detail,
        "frames": int(frames),
        "batch": batch,
        "seconds": float(seconds),
        "anomalies": list(anomalies),
    }


def _instance_row(plan: BatchPlan, key: bytes, h: Header, ident, uri: str, frame: int, index: int, position: int, crc: int, decoder: str,
                  anomalies: list[str]) -> dict[str, Any]:
    return {
        "index": index,
        "source": uri,
        "frame": frame,
        "raw_array": plan.array.split("/", 1)[1],
        "raw_position": position,
        "rows": h.rows,
        "cols": h.cols,
        "samples": h.samples,
        "dtype": np.dtype(h.dtype).name,
        "patient_key": keyed_hash(key, ident.patient_id, purpose="patient"),
        "study_key": keyed_hash(key, ident.study_uid, purpose="study"),
        "series_uid": remap_uid(key, ident.series_uid),
        "sop_uid": remap_uid(key, ident.sop_uid),
        "modality": h.modality,
        "view": h.view,
        "body_part": h.body_part,
        "photometric": h.photometric,
        # pixel_array converts YBR colour to RGB; palette colour stays as indices (LUT recorded, not applied)
        "color_space": "RGB" if h.samples == 3 else h.photometric,
        "modality_lut": h.modality_lut is not None,
        "voi_lut": h.voi_lut is not None,
        "bits_allocated": h.bits_allocated,
        "bits_stored": h.bits_stored,
        "pixel_representation": h.pixel_representation,
        "rescale_slope": h.rescale_slope,
        "rescale_intercept": h.rescale_intercept,
        "window_center": h.window_center,
        "window_width": h.window_width,
        "spacing_row": h.spacing_row,
        "spacing_col": h.spacing_col,
        **_geometry_columns(h, frame),
        "acquisition_number": h.acquisition_number,
        "burned_in_risk": bool(h.burned_in),
        "burned_in_rule": h.burned_in,
        "masked": False,
        "frame_of_reference": remap_uid(key, h.frame_of_reference),
        "transfer_syntax": h.transfer_syntax,
        "decoder": decoder,
        "anomalies": anomalies,
        "crc32": crc,
        "batch": plan.batch_id,
    }


def _geometry_columns(h: Header, frame: int) -> dict[str, float]:
    nan = float("nan")
    pos = h.positions[frame] if frame < len(h.positions) else (nan, nan, nan)
    iop = h.orientation if len(h.orientation) == 6 else (nan,) * 6
    return {"ipp_x": pos[0], "ipp_y": pos[1], "ipp_z": pos[2], **{f"iop_{i}": iop[i] for i in range(6)}}


def mask_regions(masks: dict[str, list[tuple[int, int, int, int]]], header: Header) -> list[tuple[int, int, int, int]]:
    """Configured regions for this object's device (``MANUFACTURER/MODEL``) or else its modality."""
    device = f"{header.manufacturer}/{header.model}".upper()
    for key, regions in masks.items():
        if key.upper() == device:
            return [tuple(r) for r in regions]
    return [tuple(r) for r in masks.get(header.modality.upper(), masks.get(header.modality, []))]


def apply_masks(frames: np.ndarray, regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    """``frames`` (frames, rows, cols[, samples]) with each ``(row0, col0, row1, col1)`` region set to 0
    (a copy when there are regions)."""
    if not regions:
        return frames
    frames = frames.copy()
    for r0, c0, r1, c1 in regions:
        frames[:, r0:r1, c0:c1] = 0
    return frames


class Canvas:
    """Frames smaller than an array's canvas, padded with zeros into one buffer reused from input to
    input (a fresh buffer per input costs its page faults each time: as much as the copy)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._buffer: np.ndarray | None = None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        n, rows, cols = frames.shape[:3]
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = np.zeros((n, *self.shape), self.dtype)
        out = self._buffer[:n]
        out[:, :rows, :cols] = frames
        out[:, rows:] = 0  # what an earlier, larger frame left
        out[:, :rows, cols:] = 0
        return out


def write_batch(
    store_url: str,
    plan: BatchPlan,
    *,
    secret: bytes,
    limits: Limits,
    storage_options: dict[str, Any] | None = None,
    lost: tuple[tuple[Any, ...], ...] = (),
    privacy: PrivacySettings | None = None,
) -> dict[str, Any]:
    """Decode, write and record every input of one batch. Never raises for a bad input.

    ``lost`` are ``(input, reason[, detail])`` left out of ``plan`` because decoding them killed or hung
    the worker (found by :func:`probe_input`, or blamed when the batch kept dying); they get rows with
    that reason in this batch's ledger part.
    ``privacy`` decides what the ``headers`` table gets (each instance's header de-identified
    by :mod:`radflow.dicom.deid`) and which pixel regions are masked.

    Returns a summary (counts by status and reason, frames, bytes, seconds); contains
    no identifying values.
    """
    if plan.kind != "dicom":
        from radflow.ingest.acquisitions import write_acquisition_batch

        return write_acquisition_batch(store_url, plan, secret=secret, limits=limits, storage_options=storage_options,
                                       lost=lost)
    t_start = time.perf_counter()
    root = layout.open_root(zarr_store(store_url, storage_options), mode="r+")
    arr = root[plan.array].with_config({"write_empty_chunks": True})
    checksum = layout.frame_checksum_of(root)
    frame_shape = tuple(arr.shape[1:])
    shards = ShardWriter(arr, plan.position)  # each frame encoded as it comes; whole shards written at the end
    instances: list[dict[str, Any]] = []
    luts: list[dict[str, Any]] = []
    headers: list[dict[str, Any]] = []
    privacy = privacy or PrivacySettings()
    deid = deidentifier(privacy, secret)
    used = 0
    padded = Canvas(frame_shape, arr.dtype)
    clock = Clock()

    def store(item: BatchInput, data: bytes, found: list[str]) -> int:
        nonlocal used
        with clock("decode"):
            ds = read_dataset(data, validation=limits.validation, anomalies=found)
            header = header_from_dataset(ds, limits, found)
            found[:] = header.anomalies
            name = "raw/" + layout.raw_array_name(header.dtype, header.rows, header.cols, header.samples)
            if name != plan.array or used + header.frames > plan.planned_frames:
                raise InputRejected(Reason.IO_ERROR, "input changed between indexing and writing; run ingest again")
            frames, decoder = decode_frames(ds, header, data)
            if decoder in FALLBACK_DECODERS:
                found.append(anomaly(Anomaly.DECODER_FALLBACK, f"{decoder}: every pydicom plugin failed"))
            sop_uid = remap_uid(secret, header.identity.sop_uid)
            headers.append({"sop_uid": sop_uid, "patient_key": keyed_hash(secret, header.identity.patient_id, purpose="patient"),
                            "source": item.label, "header": deid.to_json(ds)})
            del ds
            regions = mask_regions(privacy.masks, header)
            frames = apply_masks(frames, regions)
            if frames.dtype.newbyteorder("=") == arr.dtype and frames.dtype != arr.dtype:
                frames = frames.astype(arr.dtype)  # big-endian source: same values, native order
            if frames.dtype != arr.dtype:
                raise InputRejected(Reason.DECODE_ERROR, f"decoder returned {frames.dtype}, header declares {arr.dtype}")
        with clock("checksum"):
            crcs = [frame_crc32(fr, checksum) for fr in frames]
        if frames.shape[1:] != frame_shape:  # smaller than the array's canvas: padded with zeros
            with clock("decode"):
                frames = padded(frames)
        shards.add(frames)  # (encoded now: the padding buffer is free again for the next input)
        for f, crc in enumerate(crcs):
            instances.append(_instance_row(plan, secret, header, header.identity, item.label, f, plan.index + used,
                                           plan.position + used, crc, decoder, list(found))
                             | {"masked": bool(regions)})
            used += 1
        for kind, lut in (("modality", header.modality_lut), ("voi", header.voi_lut)):
            if lut is not None:
                luts.append({"sop_uid": instances[-1]["sop_uid"], "kind": kind, "first_mapped": lut[0], "bits": lut[1],
                             "data": list(lut[2])})
        return frames.shape[0]

    ledger, bytes_in = each_input(plan, limits, storage_options, store, lost, clock)
    shards.flush()
    clock.add("compress", shards.encode_seconds)
    clock.add("write", shards.write_seconds)
    with clock("tables"):
        if instances:
            write_part(store_url, "instances", plan.batch_id, instances, schema=INSTANCES_SCHEMA, storage_options=storage_options)
        if luts:
            write_part(store_url, "luts", plan.batch_id, luts, storage_options=storage_options)
        if headers:
            write_part(store_url, "headers", plan.batch_id, headers, schema=HEADERS_SCHEMA, storage_options=storage_options)
        # The ledger part is written last: its presence marks the batch as complete.
        write_part(store_url, "ledger", plan.batch_id, ledger, schema=LEDGER_SCHEMA, storage_options=storage_options)
    return batch_summary(plan, ledger, used, bytes_in, used * math.prod(frame_shape) * arr.dtype.itemsize, t_start, clock)


def probe_input(uri: str, limits: Limits, storage_options: dict[str, Any] | None = None) -> bool:
    """Decode one input and discard the result (finds inputs that kill their worker). Never raises
    for a bad input; a crash of the process is the signal."""
    try:
        data = read_bytes(uri, storage_options, max_bytes=limits.max_file_bytes)
        if data[:8] == b"\x89HDF\r\n\x1a\n":
            return True
        with deadline(limits.input_timeout_s, "decoding one input alone"):
            found: list[str] = []
            ds = read_dataset(data, validation=limits.validation, anomalies=found)
            decode_frames(ds, header_from_dataset(ds, limits, found), data)
    except Exception:  # rejected for an ordinary reason: the batch records it
        pass
    return True


def each_input(plan: BatchPlan, limits: Limits, storage_options: dict[str, Any] | None,
               store: Callable[[BatchInput, bytes, list[str]], int],
               lost: tuple[tuple[Any, ...], ...], clock: Clock) -> tuple[list[dict[str, Any]], int]:
    """Read every input of a batch and hand its bytes to ``store`` (which returns the frames it
    kept and appends what it read leniently to its list of anomalies); one ledger row per input, whatever happens, plus a row for each ``(input, reason)`` of
    ``lost`` (inputs left out because reading them killed the worker, ``WORKER_LOST``, or hung
    past ``limits.input_timeout_s``, ``TIMEOUT``). Never raises for a bad input; each input runs
    under the deadline. ``clock`` gets the seconds spent reading and digesting.

    Returns the ledger rows and the bytes read.
    """
    ledger: list[dict[str, Any]] = []
    bytes_in = 0
    # a DICOMweb source: the next instances are fetched while this one decodes (other inputs: read when taken)
    with ReadAhead.of([i.uri for i in plan.inputs], functools.partial(
            read_bytes, storage_options=storage_options, max_bytes=limits.max_file_bytes), storage_options) as ahead:
        for item in plan.inputs:
            row, n = _one_input(item, plan, limits, store, ahead, clock)
            ledger.append(row)
            bytes_in += n
    for i, reason, *detail in lost:  # (input, reason) or (input, reason, detail)
        ledger.append(ledger_row(i.label, i.size, i.version, status="rejected", reason=Reason(reason),
                                 detail=detail[0] if detail else lost_detail(reason), batch=plan.batch_id))
    return ledger, bytes_in


def _one_input(item: BatchInput, plan: BatchPlan, limits: Limits, store: Callable[[BatchInput, bytes, list[str]], int],
               ahead: ReadAhead, clock: Clock) -> tuple[dict[str, Any], int]:
    """One input read, handed to ``store`` and recorded: its ledger row and the bytes read."""
    t0 = time.perf_counter()
    sha = ""
    found: list[str] = []
    data = b""
    try:
        with deadline(limits.input_timeout_s, "reading and decoding one input"):
            with clock("read"):
                data = ahead.take(item.uri)
            with clock("digest"):
                sha = hashlib.sha256(data).hexdigest()
            outcome: dict[str, Any] = {"status": "ok", "frames": store(item, data, found)}
    except SourceUnavailable:  # the source, not this input: the batch fails and the run resumes later
        raise
    except InputRejected as exc:
        outcome = {"status": "rejected", "reason": exc.reason, "detail": exc.detail}
    except Exception as exc:  # a bad file never fails the batch
        outcome = {"status": "rejected", "reason": Reason.DECODE_ERROR, "detail": f"unexpected {type(exc).__name__} while decoding"}
    return ledger_row(item.label, item.size, item.version, sha256=sha, batch=plan.batch_id,
                      seconds=time.perf_counter() - t0, anomalies=found, **outcome), len(data)


def batch_summary(plan: BatchPlan, ledger: list[dict[str, Any]], frames: int, bytes_in: int, pixel_bytes: int,
                  t_start: float, clock: Clock) -> dict[str, Any]:
    """The counts a batch returns to the flow (nothing identifying), with the seconds of each phase."""
    reasons = Counter(r["reason"] for r in ledger if r["status"] != "ok")
    return {
        "batch": plan.batch_id,
        "kind": plan.kind,
        "inputs": len(plan.inputs),
        "ok": sum(r["status"] == "ok" for r in ledger),
        "rejected": dict(reasons),
        "anomalies": anomaly_counts([r for r in ledger if r["status"] == "ok"]),
        "frames": frames,
        "bytes_in": bytes_in,
        "pixel_bytes": pixel_bytes,
        "phase_seconds": dict(clock.seconds),
        "seconds": time.perf_counter() - t_start,
    }
