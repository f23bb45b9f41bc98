"""The QC report flow: render :func:`radflow.report.qc.qc_report` and save it beside the tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from prefect.artifacts import create_link_artifact

from radflow.config import resolve_secret_key
from radflow.flows._common import build_settings, run_logger
from radflow.flows._flow import flow
from radflow.flows.evaluate import remap_labels
from radflow.report.qc import qc_report
from radflow.store.handle import open_store
from radflow.store.urls import filesystem, join, normalize

__all__ = ["report_flow", "write_report"]


def write_report(store: str, *, labels: str | None = None, out: str | None = None, model: str | None = None,
                 storage_options: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> str:
    """Render the report of ``store`` and write it to ``out`` (default
    ``<store>/reports/qc-<UTC time>.html``); returns where it went. ``labels`` is a CSV with
    the original ``sop_instance_uid`` and 0/1 label columns (remapped here with the store's key);
    with a ``split`` column, only its ``test`` rows are scored. ``model`` (a name or the start of its
    weights' SHA-256) chooses whose predictions are shown when the store holds several models'."""
    cfg = build_settings(settings)
    st = open_store(normalize(store), storage_options)
    lab = None
    if labels:
        fs, path = filesystem(normalize(labels), storage_options)
        with fs.open(path, "rb") as fh:
            lab = pd.read_csv(fh)
        held_out = "test" if "split" in lab and (lab["split"] == "test").any() else None  # score held-out frames only
        lab = remap_labels(lab, resolve_secret_key(cfg), split=held_out).drop(columns=["split"], errors="ignore")
    text = qc_report(st, labels=lab, model=model)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = normalize(out) if out else join(st.url, "reports", f"qc-{stamp}.html")
    fs, path = filesystem(target, storage_options)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, text.encode())
    return target


@flow(name="radflow-report", validate_parameters=False)
def report_flow(store: str, labels: str | None = None, out: str | None = None, model: str | None = None,
                storage_options: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> str:
    """Write the QC report (thumbnails, rejections, intensity and prediction distributions of one model, ROC)."""
    target = write_report(store, labels=labels, out=out, model=model, storage_options=storage_options, settings=settings)
    run_logger().info("QC report: %s", target)
    create_link_artifact(target, link_text="radflow QC report", key="radflow-qc-report", description="QC report")
    return target
