"""Evaluation metrics over predictions (pure NumPy)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["roc_auc", "sensitivity_specificity", "calibration_table", "evaluate_predictions"]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half). NaN if one class is absent."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def sensitivity_specificity(y_true: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(score) >= threshold
    sens = float((p & y).sum() / max(1, y.sum()))
    spec = float((~p & ~y).sum() / max(1, (~y).sum()))
    return sens, spec


def calibration_table(y_true: np.ndarray, score: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: per score bin, the mean score and the observed positive rate."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "n": int(m.sum()),
                    "mean_score": float(s[m].mean()) if m.any() else float("nan"),
                    "observed": float(y[m].mean()) if m.any() else float("nan")})
    return out


def evaluate_predictions(joined, labels: list[str], threshold: float = 0.5):
    """Per-label AUC, sensitivity and specificity at ``threshold``.

    Parameters
    ----------
    joined : DataFrame with columns ``<label>`` (0/1 truth) and ``p_<label>`` (score)

    Returns
    -------
    (summary DataFrame with one row per label, calibration DataFrame)
    """
    import pandas as pd

    rows, calib = [], []
    for label in labels:
        sub = joined[[label, f"p_{label}"]].dropna()
        y, s = sub[label].to_numpy().astype(int), sub[f"p_{label}"].to_numpy()
        sens, spec = sensitivity_specificity(y, s, threshold)
        rows.append({"label": label, "n": len(sub), "positives": int(y.sum()), "auc": roc_auc(y, s),
                     "threshold": threshold, "sensitivity": sens, "specificity": spec})
        calib.extend({"label": label, **r} for r in calibration_table(y, s))
    return pd.DataFrame(rows), pd.DataFrame(calib)
