"""Parquet tables beside the arrays: ``<store>/tables/<name>/part-<id>.parquet``.

Each writer (an ingest batch, a processing range) owns its part names, which are pure
functions of its inputs, so a retried writer overwrites its own parts and never
another's. Readers concatenate the parts. pandas, polars, DuckDB and Spark read the
folders directly.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from radflow.store.urls import filesystem, is_remote, join

__all__ = ["anomaly_counts", "terminal_ledger", "TRANSIENT_REASONS", "LEDGER_SCHEMA", "INSTANCES_SCHEMA", "HEADERS_SCHEMA", "TABLES", "table_url", "write_part", "read_table", "list_parts"]

log = logging.getLogger(__name__)

LEDGER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("size", pa.int64()),
        ("version", pa.string()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("frames", pa.int32()),
        ("batch", pa.string()),
        ("seconds", pa.float64()),
        ("anomalies", pa.list_(pa.string())),  # what was read leniently (radflow.errors.Anomaly codes; no values)
    ]
)

INSTANCES_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("source", pa.string()),
        ("frame", pa.int32()),
        ("raw_array", pa.string()),
        ("raw_position", pa.int64()),
        ("rows", pa.int32()),
        ("cols", pa.int32()),
        ("samples", pa.int32()),
        ("dtype", pa.string()),
        ("patient_key", pa.string()),
        ("study_key", pa.string()),
        ("series_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("modality", pa.string()),
        ("view", pa.string()),
        ("body_part", pa.string()),
        ("photometric", pa.string()),
        ("color_space", pa.string()),
        ("modality_lut", pa.bool_()),
        ("voi_lut", pa.bool_()),
        ("bits_allocated", pa.int32()),
        ("bits_stored", pa.int32()),
        ("pixel_representation", pa.int32()),
        ("rescale_slope", pa.float64()),
        ("rescale_intercept", pa.float64()),
        ("window_center", pa.float64()),
        ("window_width", pa.float64()),
        ("spacing_row", pa.float64()),
        ("spacing_col", pa.float64()),
        ("ipp_x", pa.float64()),
        ("ipp_y", pa.float64()),
        ("ipp_z", pa.float64()),
        *[(f"iop_{i}", pa.float64()) for i in range(6)],
        ("acquisition_number", pa.int32()),
        ("burned_in_risk", pa.bool_()),
        ("burned_in_rule", pa.string()),
        ("masked", pa.bool_()),
        ("frame_of_reference", pa.string()),
        ("transfer_syntax", pa.string()),
        ("decoder", pa.string()),
        ("anomalies", pa.list_(pa.string())),
        ("crc32", pa.int64()),
        ("batch", pa.string()),
    ]
)

HEADERS_SCHEMA = pa.schema(
    [
        ("sop_uid", pa.string()),
        ("patient_key", pa.string()),
        ("source", pa.string()),
        ("header", pa.string()),  # DICOM JSON model (PS3.18 F), de-identified unless the store says otherwise
    ]
)

TABLES = {"ledger": LEDGER_SCHEMA, "instances": INSTANCES_SCHEMA, "headers": HEADERS_SCHEMA, "features": None, "predictions": None, "errors": None,
          "kspace": None, "sinograms": None, "volumes": None,
          "luts": None}


def anomaly_counts(rows: pd.DataFrame | list[dict[str, Any]]) -> dict[str, int]:
    """Inputs (or frames) per anomaly code, from ledger or instance rows with an ``anomalies`` list
    (``"CODE element VR"`` strings); rows without the column (older stores) count as none."""
    lists = rows.get("anomalies") if isinstance(rows, pd.DataFrame) else [r.get("anomalies") for r in rows]
    counts: dict[str, int] = {}
    for found in ([] if lists is None else lists):
        if found is None or len(found) == 0:
            continue
        for code in sorted({str(a).split(" ", 1)[0] for a in found}):
            counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items()))


#: reasons a later run retries (the cause may pass: permissions fixed, a worker's bad moment)
TRANSIENT_REASONS = ("IO_ERROR", "WORKER_LOST", "TIMEOUT")
_RANK = {"ok": 0, "duplicate": 1, "rejected": 2}


def terminal_ledger(ledger: pd.DataFrame) -> pd.DataFrame:
    """One row per input (``source, size, version``): its best outcome over every attempt — ``ok``, then
    ``duplicate``, then a permanent rejection, then a transient one (retries add rows; the ledger
    keeps them all). A folder that could not be listed drops out once a later run lists paths
    under it."""
    if ledger.empty or "status" not in ledger:
        return ledger
    rank = ledger["status"].map(_RANK).fillna(3) * 2 + ledger["reason"].isin(TRANSIENT_REASONS)
    best = ledger.assign(_rank=rank).sort_values(["_rank", "batch"], kind="stable")
    best = best.drop_duplicates(["source", "size", "version"], keep="first").drop(columns="_rank")
    folders = best[(best["reason"] == "IO_ERROR") & best["detail"].fillna("").str.startswith("folder cannot be listed")]
    if len(folders):
        sources = best["source"].astype(str)
        listed = [f for f in folders["source"] if sources.str.startswith(str(f) + "/").any()]
        best = best[~best["source"].isin(listed) | ~best.index.isin(folders.index)]
    return best


def table_url(store_url: str, name: str) -> str:
    return join(store_url, "tables", name)


def write_part(
    store_url: str,
    name: str,
    part: str,
    rows: list[dict[str, Any]] | pd.DataFrame | pa.Table,
    *,
    schema: pa.Schema | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write one part of table ``name`` atomically; return its URL.

    Local parts are written to a temporary name and renamed; an S3 PUT is atomic.
    """
    schema = schema if schema is not None else TABLES.get(name)
    if isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    elif schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = pa.Table.from_pylist(rows)
    url = join(table_url(store_url, name), f"part-{part}.parquet")
    fs, path = filesystem(url, storage_options)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    if is_remote(url):
        fs.pipe_file(path, data)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return url


def list_parts(store_url: str, name: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    fs, path = filesystem(table_url(store_url, name), storage_options)
    fs.invalidate_cache(path)  # parts are written by other processes while a run goes on
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    return sorted(p for p in found if p.endswith(".parquet") and os.path.basename(p).startswith("part-"))


def read_table(store_url: str, name: str, storage_options: dict[str, Any] | None = None, *,
               unreadable: list[str] | None = None) -> pd.DataFrame:
    """All parts of table ``name`` as one DataFrame (empty, with the schema's columns, if none).

    With ``unreadable`` (a list), a part that does not parse is appended to it and skipped
    instead of raising (``radflow verify`` reads damaged stores this way)."""
    fs, _ = filesystem(table_url(store_url, name), storage_options)
    parts = list_parts(store_url, name, storage_options)
    tables = []
    for p in parts:
        try:
            with fs.open(p, "rb") as fh:
                tables.append(pq.read_table(fh))
        except Exception:  # pyarrow raises assorted types for a damaged part
            if unreadable is None:
                raise
            unreadable.append(p)
    schema = TABLES.get(name)
    if not tables:
        return schema.empty_table().to_pandas() if schema is not None else pd.DataFrame()
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()
