"""The evaluate flow: predictions joined with ground-truth labels → AUC, sensitivity, specificity."""

from __future__ import annotations

from typing import Any

import pandas as pd

from radflow.config import resolve_secret_key
from radflow.errors import ConfigError
from radflow.flows._common import build_settings, markdown_table, publish_artifact, run_logger
from radflow.dicom.pseudonym import remap_uid
from radflow.flows._flow import flow
from radflow.store.handle import open_store
from radflow.store.lock import writer
from radflow.store.tables import write_part
from radflow.store.versions import transaction
from radflow.store.urls import filesystem, normalize
from radflow.tasks.metrics import evaluate_predictions

__all__ = ["evaluate_flow", "join_labels", "remap_labels"]


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame, key: bytes, *, split: str | None = None) -> pd.DataFrame:
    """Join predictions with a labels table keyed by original ``sop_instance_uid``.

    The label UIDs are remapped with the store's key, so the clear UIDs never meet the
    store's tables. ``split`` keeps only label rows with that ``split`` value.
    """
    return predictions.merge(remap_labels(labels, key, split=split), on="sop_uid", how="inner")


def remap_labels(labels: pd.DataFrame, key: bytes, *, split: str | None = None) -> pd.DataFrame:
    """A labels table keyed by original ``sop_instance_uid`` → keyed by the store's ``sop_uid``
    (``path`` dropped; ``split`` keeps only label rows with that value)."""
    if "sop_instance_uid" not in labels:
        raise ConfigError("labels need a 'sop_instance_uid' column (the original SOP Instance UID)")
    if split is not None:
        if "split" not in labels:
            raise ConfigError("labels have no 'split' column")
        values = sorted(str(v) for v in labels["split"].dropna().unique())
        labels = labels[labels["split"].astype(str) == str(split)]
        if labels.empty:
            raise ConfigError(f"--split {split!r} matches no label row; the 'split' column holds {values}")
    lab = labels.drop(columns=[c for c in ("path",) if c in labels]).copy()
    lab["sop_uid"] = [remap_uid(key, str(u)) for u in lab.pop("sop_instance_uid")]
    return lab


def check_labels(labels: pd.DataFrame, names: list[str], source: str) -> None:
    """Each label column holds 0/1 (blank for unknown) and both classes; ``ConfigError`` naming the
    column and the first offending row otherwise."""
    for name in names:
        col = labels[name]
        numeric = pd.to_numeric(col, errors="coerce")
        bad = col.notna() & ~numeric.isin([0, 1])
        if bad.any():
            row = int(bad.idxmax())
            raise ConfigError(f"{source}: column {name!r} must hold 0 or 1 (blank for unknown); line {row + 2} of "
                              f"the CSV holds {str(col[row])[:20]!r}")
        classes = set(numeric.dropna().astype(int))
        if len(classes) < 2:
            raise ConfigError(f"{source}: column {name!r} holds only class {sorted(classes) or 'none'}; "
                              "an AUC needs positive and negative cases")
        labels[name] = numeric


@flow(name="radflow-evaluate", validate_parameters=False)
def evaluate_flow(
    store: str,
    labels: str,
    threshold: float = 0.5,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the store's predictions against a labels CSV; writes ``tables/evaluation``."""
    import math

    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ConfigError(f"--threshold must be a number strictly between 0 and 1, got {threshold!r}")
    cfg = build_settings(settings)
    st = open_store(normalize(store), storage_options)
    preds = st.predictions()
    if preds.empty:
        raise ConfigError(f"{st.url} has no predictions; run `radflow process {st.url} --steps infer --model ...` first")
    fs, path = filesystem(normalize(labels), storage_options)
    with fs.open(path, "rb") as fh:
        lab = pd.read_csv(fh)
    names = [c[2:] for c in preds.columns if c.startswith("p_") and c[2:] in lab.columns]
    if not names:
        raise ConfigError(f"no label column of {labels!r} matches a prediction column {[c for c in preds if c.startswith('p_')]}")
    lab = remap_labels(lab, resolve_secret_key(cfg), split=split).rename(columns={"sop_uid": "_sop_uid"})
    check_labels(lab, names, labels)
    lab = lab.rename(columns={"_sop_uid": "sop_uid"})
    results = []
    with writer(st.url, storage_options, command="evaluate"), \
            transaction(st.url, storage_options, command="evaluate") as tx:
        for (model, sha), group in preds.groupby(["model", "model_sha256"]):
            joined = group.merge(lab, on="sop_uid", how="inner")
            summary, calib = evaluate_predictions(joined, names, threshold)
            summary.insert(0, "model", model)
            summary.insert(1, "model_sha256", sha)
            write_part(st.url, "evaluation", sha[:12], summary, storage_options=storage_options)
            write_part(st.url, "calibration", sha[:12], calib, storage_options=storage_options)
            results.append(summary)
        if tx is not None:
            tx.summary = {"models": len(results), "labels": len(names)}
    table = pd.concat(results, ignore_index=True)
    publish_artifact(
        "# radflow evaluation\n\n" + markdown_table(table.to_dict(orient="records")),
        key="radflow-evaluation", description="AUC, sensitivity and specificity per label",
    )
    run_logger().info("evaluated %d model(s) on %d labels", len(results), len(names))
    return {"evaluation": table.to_dict(orient="records")}

