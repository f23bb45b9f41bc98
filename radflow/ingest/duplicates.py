"""Duplicates by SOP Instance UID: the first stored copy is kept, later copies are compared.

A later input whose (remapped) SOP Instance UID is already stored is decoded and compared
with the stored frames *by value*: same dtype, same shape and the same CRC32 of the values
in native byte order. The same values in another byte order or transfer syntax give
``DUPLICATE_IDENTICAL``; other values, another shape, or the same bytes under another dtype
(a uint16 copy of an int16 image) give ``DUPLICATE_CONFLICT``. Nothing stored is ever
overwritten.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from radflow.config import Limits
from radflow.errors import InputRejected, Reason, SourceUnavailable
from radflow.ingest.batches import apply_masks, ledger_row, mask_regions
from radflow.store.layout import frame_checksum_of, frame_crc32, open_root
from radflow.dicom.read import decode_frames, header_from_dataset, read_dataset
from radflow.ingest.sources import read_bytes
from radflow.store.tables import LEDGER_SCHEMA, write_part
from radflow.store.urls import zarr_store

__all__ = ["split_duplicates", "check_duplicates"]


def split_duplicates(candidates: list[dict[str, Any]], stored: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split indexed candidates (in ``uri`` order) into primaries and duplicates of a stored or earlier
    input with the same ``sop_key``. Inputs without a ``sop_key`` are always primaries."""
    seen = set(stored)
    primaries, duplicates = [], []
    for c in sorted(candidates, key=lambda c: c["uri"]):
        key = c.get("sop_key") or ""
        if key and key in seen:
            duplicates.append(c)
        else:
            if key:
                seen.add(key)
            primaries.append(c)
    return primaries, duplicates


Frame = tuple[int, int, str, int, int, int]  # stored frame: index, crc32, dtype name, rows, cols, samples


def _frame_key(frame: Any, checksum: str) -> tuple[int, str, int, int, int]:
    """What two frames must share to hold the same values: the checksum (native order), dtype, shape."""
    samples = frame.shape[2] if frame.ndim == 3 else 1
    return frame_crc32(frame, checksum), frame.dtype.newbyteorder("=").name, frame.shape[0], frame.shape[1], samples


def _compare(frames: Any, stored: list[Frame], checksum: str) -> tuple[bool, str]:
    """``(same values, why not)`` of decoded ``frames`` against the stored copy's frames (whose
    checksums are the store's ``checksum``)."""
    got = [_frame_key(f, checksum) for f in frames]
    want = [tuple(s[1:]) for s in stored]
    if len(got) != len(want):
        return False, f"{len(got)} frames vs {len(want)} stored"
    for g, w in zip(got, want):
        if g[1] != w[1]:
            return False, f"dtype {g[1]} vs {w[1]} stored"
        if g[2:] != w[2:]:
            return False, f"shape {g[2:]} vs {w[2:]} stored"
        if g[0] != w[0]:
            return False, "different pixel values"
    return True, ""


def stored_frames(store_url: str, sop_keys: list[str], storage_options: dict[str, Any] | None = None
                  ) -> dict[str, list[Frame]]:
    """``sop_key`` → ``[(index, crc32, dtype, rows, cols, samples), ...]`` of the stored frames of those
    instances, in frame order (read with a filter: the worker's own rows of ``instances``)."""
    from radflow.store.tables import read_table

    inst = read_table(store_url, "instances", storage_options,
                      columns=["sop_uid", "frame", "index", "crc32", "dtype", "rows", "cols", "samples"],
                      filters=[("sop_uid", "in", sorted(set(sop_keys)))]).sort_values(["sop_uid", "frame"])
    return {k: list(zip(g["index"].astype(int), g["crc32"].astype(int), g["dtype"].astype(str), g["rows"].astype(int),
                        g["cols"].astype(int), g["samples"].astype(int))) for k, g in inst.groupby("sop_uid")}


def check_duplicates(store_url: str, items: list[dict[str, Any]], expected: dict[str, list[Frame]] | None = None, *,
                     limits: Limits, storage_options: dict[str, Any] | None = None,
                     masks: dict[str, list[tuple[int, int, int, int]]] | None = None,
                     checksum: str | None = None) -> dict[str, Any]:
    """Decode each duplicate candidate and compare its frames with the stored instance.

    Parameters
    ----------
    items : index rows (``uri, size, version, sop_key``)
    expected : ``sop_key`` → ``[(index, crc32, dtype, rows, cols, samples), ...]`` of the stored
        frames, in frame order (default: read from the store's ``instances`` here, on the worker)
    masks : the privacy masks the store applies (a copy is masked the same way before comparing)
    checksum : the frame checksum of ``expected`` (default: the store's, read from its root)

    Returns counts by reason; writes one ledger part named after the items.
    """
    if expected is None:
        expected = stored_frames(store_url, [i["sop_key"] for i in items], storage_options)
    if checksum is None:
        checksum = frame_checksum_of(open_root(zarr_store(store_url, storage_options), mode="r"))
    rows = []
    part = hashlib.sha256("\0".join(f"{i['uri']}\0{i['size']}\0{i['version']}" for i in items).encode()).hexdigest()[:16]
    for item in items:
        t0 = time.perf_counter()
        sha = ""
        stored = expected[item["sop_key"]]
        try:
            data = read_bytes(item["uri"], storage_options, max_bytes=limits.max_file_bytes)
            sha = hashlib.sha256(data).hexdigest()
            found: list[str] = []
            ds = read_dataset(data, validation=limits.validation, anomalies=found)
            header = header_from_dataset(ds, limits, found)
            frames, _ = decode_frames(ds, header, data)
            frames = apply_masks(frames, mask_regions(masks or {}, header))
            same, why = _compare(frames, stored, checksum)
            reason = Reason.DUPLICATE_IDENTICAL if same else Reason.DUPLICATE_CONFLICT
            detail = (f"same SOP Instance UID as stored frame index {stored[0][0]}; "
                      + ("identical pixel values" if same else f"different: {why}"))
            rows.append(ledger_row(item.get("source") or item["uri"], item["size"], item["version"], status="duplicate", reason=reason,
                                   detail=detail, sha256=sha, frames=0, batch=f"dup-{part}", seconds=time.perf_counter() - t0))
        except SourceUnavailable:  # the source, not this input: the run ends and resumes later
            raise
        except InputRejected as exc:
            rows.append(ledger_row(item.get("source") or item["uri"], item["size"], item["version"], status="rejected", reason=exc.reason,
                                   detail=exc.detail, sha256=sha, batch=f"dup-{part}", seconds=time.perf_counter() - t0))
        except Exception as exc:  # a bad file never fails the run
            rows.append(ledger_row(item.get("source") or item["uri"], item["size"], item["version"], status="rejected", reason=Reason.DECODE_ERROR,
                                   detail=f"unexpected {type(exc).__name__} while decoding", sha256=sha,
                                   batch=f"dup-{part}", seconds=time.perf_counter() - t0))
    write_part(store_url, "ledger", f"dup-{part}", rows, schema=LEDGER_SCHEMA, storage_options=storage_options)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    return {"inputs": len(rows), "duplicates": sum(r["status"] == "duplicate" for r in rows), "reasons": counts}
