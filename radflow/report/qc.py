"""A self-contained HTML quality-control report of a store (one file: images as embedded PNG,
plots as inline SVG, no scripts or network).

Sections: what the store is (privacy mode included); inputs by status and rejected by reason;
a thumbnail grid of sampled frames per modality and view; intensity histograms per modality;
prediction distributions per label; with labels, ROC curves and AUCs. Frames flagged for
burned-in text risk are left out of the thumbnails (their count is shown).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import numpy as np
import pandas as pd

from radflow.errors import ConfigError
from radflow.store.tables import anomaly_counts

__all__ = ["qc_report", "roc_curve", "one_model"]

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _png(img: np.ndarray, size: int = 160) -> str:
    """A data URI of a grey thumbnail of ``img`` (scaled to 1st–99th percentile)."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    a = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0, 1)
    im = Image.fromarray((a * 255).astype(np.uint8))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _svg_hist(series: dict[str, np.ndarray], title: str, bins: int = 30, width: int = 420, height: int = 220) -> str:
    """Overlaid histograms (one colour per series) as inline SVG."""
    values = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in series.values()]
    if not any(v.size for v in values):
        return f"<p class='empty'>{html.escape(title)}: no data</p>"
    lo = min(float(v.min()) for v in values if v.size)
    hi = max(float(v.max()) for v in values if v.size)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, edges)[0] / max(1, v.size) for v in values]
    top = max(float(c.max()) for c in counts) or 1.0
    pad_l, pad_b, pad_t = 40, 30, 24
    pw, ph = width - pad_l - 10, height - pad_b - pad_t
    parts = [f"<svg class='plot' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img'><title>{html.escape(title)}</title>",
             f"<text x='{width / 2}' y='16' text-anchor='middle' font-size='13'>{html.escape(title)}</text>",
             f"<line x1='{pad_l}' y1='{pad_t + ph}' x2='{pad_l + pw}' y2='{pad_t + ph}' stroke='#333'/>",
             f"<line x1='{pad_l}' y1='{pad_t}' x2='{pad_l}' y2='{pad_t + ph}' stroke='#333'/>"]
    bw = pw / bins
    for k, (name, c) in enumerate(zip(series, counts)):
        colour = _PALETTE[k % len(_PALETTE)]
        for i, n in enumerate(c):
            if n <= 0:
                continue
            h = ph * float(n) / top
            parts.append(f"<rect class='bar' x='{pad_l + i * bw:.1f}' y='{pad_t + ph - h:.1f}' width='{max(bw - 1, 1):.1f}' "
                         f"height='{h:.1f}' fill='{colour}' fill-opacity='0.55'/>")
        parts.append(f"<text x='{pad_l + pw - 4}' y='{pad_t + 14 + 14 * k}' text-anchor='end' font-size='11' "
                     f"fill='{colour}'>{html.escape(str(name))} (n={values[k].size})</text>")
    for x, label, anchor in ((pad_l, f"{lo:.3g}", "start"), (pad_l + pw, f"{hi:.3g}", "end")):
        parts.append(f"<text x='{x}' y='{height - 10}' text-anchor='{anchor}' font-size='10'>{label}</text>")
    parts.append("</svg>")
    return "".join(parts)


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates over all thresholds, and the AUC (trapezoid; ties averaged)."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], yy.size - 1]
    tp = np.cumsum(yy)[distinct]
    fp = (distinct + 1) - tp
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def _svg_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], size: int = 260) -> str:
    pad = 34
    p = size - 2 * pad
    parts = [f"<svg class='plot' width='{size}' height='{size}' role='img'>"
             f"<title>ROC</title><text x='{size / 2}' y='16' text-anchor='middle' font-size='13'>ROC</text>",
             f"<rect x='{pad}' y='{pad}' width='{p}' height='{p}' fill='none' stroke='#333'/>",
             f"<line x1='{pad}' y1='{pad + p}' x2='{pad + p}' y2='{pad}' stroke='#aaa' stroke-dasharray='4'/>"]
    for k, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        pts = " ".join(f"{pad + p * x:.1f},{pad + p * (1 - t):.1f}" for x, t in zip(fpr, tpr))
        parts.append(f"<polyline class='roc' points='{pts}' fill='none' stroke='{colour}' stroke-width='2'/>")
        parts.append(f"<text x='{pad + p - 4}' y='{pad + p - 8 - 14 * k}' text-anchor='end' font-size='11' "
                     f"fill='{colour}'>{html.escape(name)} AUC {auc:.3f}</text>")
    parts.append(f"<text x='{size / 2}' y='{size - 6}' text-anchor='middle' font-size='10'>false-positive rate</text></svg>")
    return "".join(parts)


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p class='empty'>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.thumb{width:170px;font-size:11px;text-align:center}
.thumb img{width:160px;height:160px;object-fit:contain;background:#000;display:block;margin:0 auto}
.plots{display:flex;flex-wrap:wrap;gap:18px}.empty{color:#888}.meta{font-size:13px;color:#444}
.warn{color:#a40000;font-weight:bold}
"""


def one_model(preds: pd.DataFrame, model: str | None = None) -> tuple[pd.DataFrame, str, str]:
    """The predictions of one model: ``(rows, name, weights sha256)``.

    ``model`` is a model name or a prefix of its weights' SHA-256; without it the store must hold
    the predictions of one model only (a report or an evaluation never pools two models' scores).
    """
    if preds.empty or "model_sha256" not in preds:
        return preds, "", ""
    models = preds[["model", "model_sha256"]].drop_duplicates().sort_values(["model", "model_sha256"])
    held = ", ".join(f"{n} [{s[:12]}]" for n, s in zip(models["model"], models["model_sha256"]))
    if model:
        models = models[(models["model"] == model) | models["model_sha256"].str.startswith(model)]
        if models.empty:
            raise ConfigError(f"--model {model!r} names none of the models with predictions in this store: {held}")
    if len(models) > 1:
        raise ConfigError(f"the store holds predictions of {len(models)} models ({held}); name one with --model "
                          "(a name or the start of its weights' SHA-256)")
    name, sha = str(models["model"].iloc[0]), str(models["model_sha256"].iloc[0])
    return preds[preds["model_sha256"] == sha], name, sha


def qc_report(store, *, labels: pd.DataFrame | None = None, model: str | None = None, per_group: int = 6,
              seed: int = 0) -> str:
    """The report of ``store`` (a :class:`~radflow.store.handle.Store`) as one HTML string.

    ``labels``: optional ``sop_uid`` (remapped, as in ``instances``) plus one 0/1 column per
    label; with predictions for those labels, ROC curves are drawn. ``model``: whose predictions
    to show (see :func:`one_model`); the report names it with its weights' SHA-256.
    """
    preds, model_name, model_sha = one_model(store.predictions(), model)  # fails before any rendering
    from radflow.store.inspect import privacy_summary

    ledger, inst = store.ledger(), store.instances()
    privacy = privacy_summary(store.privacy)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>radflow QC report</title>"
             f"<style>{_CSS}</style></head><body><h1>radflow QC report</h1>"
             f"<p class='meta'>Store <code>{html.escape(store.url)}</code> · generated {now} · "
             f"{len(ledger)} inputs, {len(inst)} frames</p>"]
    mode = privacy.get("mode")
    cls = "warn" if mode == "keep-identifiers" else "meta"
    parts.append(f"<p class='{cls}'>Privacy: {html.escape(str(mode))}; source paths {html.escape(str(privacy.get('source_paths')))}; "
                 f"{html.escape(str(privacy.get('detail') or ''))}</p>")

    parts.append("<h2>Inputs</h2>")
    if not ledger.empty:
        status = ledger.fillna({"reason": ""}).groupby(["status", "reason"]).size().reset_index(name="inputs")
        parts.append(_table(status))
        kept = anomaly_counts(ledger[ledger["status"] == "ok"])
        if kept:
            parts.append("<h3>Kept with anomalies (read leniently, recorded)</h3>")
            parts.append(_table(pd.DataFrame({"anomaly": list(kept), "inputs": list(kept.values())})))

    parts.append("<h2>Sampled frames by modality and view</h2>")
    risky = inst["burned_in_risk"].fillna(False).astype(bool) if "burned_in_risk" in inst else pd.Series(False, index=inst.index)
    shown = inst[~risky]
    has_images = "images" in store.root
    rng = np.random.default_rng(seed)
    groups = shown.fillna({"modality": "?", "view": ""}).groupby(["modality", "view"], sort=True)
    for (modality, view), g in groups:
        take = g.iloc[np.sort(rng.choice(len(g), size=min(per_group, len(g)), replace=False))]
        cells = []
        for _, row in take.iterrows():
            idx = int(row["index"])
            img = store.images[idx] if has_images and idx < store.images.shape[0] else store.raw_frame(idx)
            cells.append(f"<div class='thumb'><img class='qc-thumb' alt='frame {idx}' src='{_png(img)}'>"
                         f"frame {idx} · {int(row['rows'])}×{int(row['cols'])}</div>")
        parts.append(f"<h3>{html.escape(str(modality))} {html.escape(str(view))} ({len(g)} frames)</h3>"
                     f"<div class='grid'>{''.join(cells)}</div>")
    if risky.any():
        parts.append(f"<p class='meta'>{int(risky.sum())} frames flagged for burned-in text risk are not shown.</p>")

    parts.append("<h2>Intensity</h2><div class='plots'>")
    feats = store.features()
    if "kind" in feats:
        feats = feats[feats["kind"] == "image"]
    if not feats.empty and "mean" in feats:
        merged = feats.merge(inst[["index", "modality"]], on="index")
        parts.append(_svg_hist({m: g["mean"].to_numpy() for m, g in merged.groupby("modality")},
                               "mean intensity per frame (canvas, 0–1)"))
        if "p99" in merged:
            parts.append(_svg_hist({m: g["p99"].to_numpy() for m, g in merged.groupby("modality")}, "99th percentile"))
    else:
        sample = shown.head(64)
        vals = {m: np.concatenate([store.raw_frame(int(i)).ravel()[::97] for i in g["index"]])
                for m, g in sample.groupby("modality")} if len(sample) else {}
        parts.append(_svg_hist(vals, "stored pixel values (sample)"))
    parts.append("</div>")

    score_cols = [c for c in preds.columns if c.startswith("p_") and preds[c].notna().any()]
    if score_cols:
        parts.append("<h2>Predictions</h2>")
        if model_sha:
            parts.append(f"<p class='meta qc-model'>Model <b>{html.escape(model_name)}</b> · weights SHA-256 "
                         f"<code>{model_sha}</code> · {len(preds)} frames</p>")
        parts.append("<div class='plots'>")
        for c in score_cols:
            parts.append(_svg_hist({c[2:]: preds[c].to_numpy()}, f"predicted probability: {c[2:]}", bins=20))
        parts.append("</div>")
        if labels is not None:
            keyed = preds if "sop_uid" in preds else preds.merge(inst[["index", "sop_uid"]], on="index")
            merged = keyed.merge(labels, on="sop_uid")
            curves = {}
            for c in score_cols:
                name = c[2:]
                if name in merged and merged[name].nunique() == 2:
                    curves[name] = roc_curve(merged[name].to_numpy(), merged[c].to_numpy())
            if curves:
                parts.append(f"<h2>ROC ({len(merged)} labelled frames)</h2>{_svg_roc(curves)}")
    parts.append("</body></html>")
    return "".join(parts)
