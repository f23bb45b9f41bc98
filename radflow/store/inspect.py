"""A store's summary for ``radflow inspect`` (counts only; nothing identifying)."""

from __future__ import annotations

from typing import Any

from radflow.store.handle import open_store
from radflow.store.tables import TABLES, anomaly_counts, count_rows, list_parts, read_table
from radflow.store.urls import filesystem

__all__ = ["describe"]


def privacy_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The privacy facts an operator must see (a store from before privacy was recorded says so)."""
    if not record:
        return {"mode": "unrecorded", "source_paths": "kept", "detail": "written before radflow recorded its privacy mode"}
    out = {k: record.get(k) for k in ("mode", "source_paths", "dates", "patient_identity_removed")}
    out["detail"] = record.get("deidentification_method", "")
    if record.get("masks"):
        out["masks"] = sorted(record["masks"])
    return out


def _filled(st: Any, inst: Any) -> dict[str, int]:
    """Frames (slices) each array holds, against its capacity (arrays grow by whole shards)."""
    out: dict[str, int] = {}
    if "raw_array" in inst:
        out.update({f"raw/{k}": int(v) for k, v in inst["raw_array"].value_counts().items()})
    done = read_table(st.url, "stages", st.storage_options, columns=["scope", "frames"])
    if "scope" in done and (done["scope"] == "preprocess").any():
        out["images"] = int(done.loc[done["scope"] == "preprocess", "frames"].sum())
    for table in ("kspace", "sinograms"):
        df = read_table(st.url, table, st.storage_options, columns=["array"])
        if "array" in df:
            out.update({str(k): int(v) for k, v in df["array"].value_counts().items()})
    return out


def describe(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inputs by status and reason, frames by modality and size, arrays, tables and object counts."""
    st = open_store(url, storage_options)
    # the columns the summary counts, not whole tables (headers, paths and checksums stay on disk)
    ledger = read_table(st.url, "ledger", st.storage_options, columns=["status", "reason", "anomalies"], version=st.version)
    inst = read_table(st.url, "instances", st.storage_options,
                      columns=["modality", "rows", "cols", "raw_array", "burned_in_risk"], version=st.version)
    by_status = (
        ledger.fillna({"reason": ""}).groupby(["status", "reason"]).size().reset_index(name="inputs").to_dict(orient="records")
    )
    frames = []
    if not inst.empty:
        sizes = inst["rows"].astype(str) + "x" + inst["cols"].astype(str)
        frames = (
            inst.assign(size=sizes).groupby(["modality", "size"]).size().reset_index(name="frames").to_dict(orient="records")
        )
    fs, root = filesystem(st.url, storage_options)
    arrays = []
    named = {f"raw/{k}": v for k, v in st.raw_arrays().items()}
    if "images" in st.root:
        named["images"] = st.images
    for group in ("kspace", "sinograms", "reference", "recon", "volumes"):
        if group in st.root:
            named.update({f"{group}/{k}": st.root[f"{group}/{k}"] for k in sorted(st.root[group].array_keys())})
    filled = _filled(st, inst)
    for name, arr in named.items():
        try:
            stored = arr.nbytes_stored() if st.version else fs.du(f"{root}/{name}")
        except FileNotFoundError:
            stored = 0
        arrays.append({"name": name, "shape": arr.shape, "dtype": str(arr.dtype), "chunks": arr.chunks,
                       "shards": arr.shards, "stored_bytes": stored, "filled": filled.get(name)})
    tables = {}
    for name in sorted(set(TABLES) | {"evaluation", "calibration"}):
        if list_parts(st.url, name, storage_options, version=st.version):
            tables[name] = count_rows(st.url, name, storage_options, version=st.version)
    objects = st.object_count()
    return {
        "url": st.url,
        "meta": st.meta,
        "version": st.version,
        "privacy": privacy_summary(st.privacy),
        "burned_in_risk": int(inst["burned_in_risk"].fillna(False).sum()) if "burned_in_risk" in inst else 0,
        "ledger": by_status,
        "anomalies": anomaly_counts(ledger[ledger["status"] == "ok"]) if "status" in ledger else {},
        "frames": frames,
        "arrays": arrays,
        "tables": tables,
        "objects": objects,
        "objects_per_1000_inputs": 1000 * objects / max(1, len(ledger)),
    }
