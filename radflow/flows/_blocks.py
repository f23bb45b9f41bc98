"""Block functions that Dask runs on workers during processing.

Each adapts one chunk of a Dask array to a pure function of :mod:`radflow.tasks`,
reading raw frames from the store where the stage needs them. No Prefect here:
workers import this module without the orchestration stack.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from radflow.tasks.features import block_features
from radflow.tasks.preprocess import Enhancements, FrameParams, prepare_frame

__all__ = ["PARAM_COLUMNS", "preprocess_block", "features_block", "infer_block", "recon_block", "fbp_block", "qc_block"]

#: Columns of the per-frame parameter array handed to :func:`preprocess_block`.
PARAM_COLUMNS = (
    "valid", "index", "raw_id", "raw_position", "rows", "cols", "rescale_slope", "rescale_intercept",
    "window_center", "window_width", "monochrome1",
)


@functools.lru_cache(maxsize=8)
def _raw_arrays(store_url: str, options_json: str) -> dict[str, Any]:
    from radflow.store.handle import open_store

    return open_store(store_url, json.loads(options_json) or None).raw_arrays()


def preprocess_block(
    params: np.ndarray, *, store_url: str, options_json: str, raw_names: tuple[str, ...], canvas: int,
    method: str, out_dtype: str, enhancements: Enhancements | None = None,
    luts: dict[int, dict[str, Any]] | None = None,
) -> np.ndarray:
    """Prepare one block of frames.

    Parameters
    ----------
    params : (n, 1, len(PARAM_COLUMNS)) float64, one row per global index (``valid`` 0 = empty slot)
    luts : global index → ``{"modality": (first, data), "voi": (first, bits, data)}`` for frames with LUT sequences

    Returns
    -------
    (n, canvas, canvas) ``out_dtype`` NumPy array (zeros in empty slots).
    """
    arrays = _raw_arrays(store_url, options_json)
    p = params[:, 0, :]
    out = np.zeros((p.shape[0], canvas, canvas), dtype=out_dtype)
    col = {name: i for i, name in enumerate(PARAM_COLUMNS)}
    for i in range(p.shape[0]):
        row = p[i]
        if not row[col["valid"]]:
            continue
        arr = arrays[raw_names[int(row[col["raw_id"]])]]
        frame = np.asarray(arr[int(row[col["raw_position"]])])
        fp = FrameParams(
            rows=int(row[col["rows"]]),
            cols=int(row[col["cols"]]),
            rescale_slope=float(row[col["rescale_slope"]]),
            rescale_intercept=float(row[col["rescale_intercept"]]),
            window_center=float(row[col["window_center"]]),
            window_width=float(row[col["window_width"]]),
            monochrome1=bool(row[col["monochrome1"]]),
            **(luts or {}).get(int(row[col["index"]]), {}),
        )
        img = prepare_frame(frame, fp, canvas, method, enhancements)  # type: ignore[arg-type]
        if np.dtype(out_dtype) == np.uint16:
            img = np.round(img * 65535.0)
        out[i] = img.astype(out_dtype)
    return out


def features_block(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, canvas: int, cutoff: float) -> np.ndarray:
    """Features of a block of canvases; ``rows``/``cols`` are ``(n, 1, 1)`` native sizes (0 = empty)."""
    x = block.astype(np.float32)
    if block.dtype == np.uint16:
        x /= 65535.0
    geometry = np.stack([rows[:, 0, 0], cols[:, 0, 0]], axis=1)
    return block_features(x, geometry, canvas=canvas, cutoff=cutoff)


def infer_block(block: np.ndarray, *, spec: Any, autocast: str | None = None, embedding_dim: int = 0,
                micro_batch: int | None = None) -> np.ndarray:
    """Model outputs for a block of canvases (model loaded once per worker).

    Returns ``(n, outputs + embedding_dim)`` float32: scores, then the embedding when asked.
    """
    from radflow.models.cache import cached_model
    from radflow.tasks.infer import predict, to_model_input

    model = cached_model(spec)
    x = block.astype(np.float32)
    if block.dtype == np.uint16:
        x /= 65535.0
    # Input preparation runs here, on the task thread, overlapping the previous block's forward pass.
    x = to_model_input(x, model.card)
    if x.device.type == "cpu" and getattr(model, "device", "cpu") != "cpu":
        x = x.pin_memory()

    def run() -> np.ndarray:
        kw = {"autocast": autocast, "micro_batch": micro_batch, "prepared": True, "device": getattr(model, "device", None)}
        if embedding_dim:
            out = predict(model.module, x, model.card, embeddings=True, **kw)
            return np.concatenate([out.scores, out.embeddings], axis=1).astype(np.float32)
        return predict(model.module, x, model.card, **kw)

    return model.runner.submit(run).result()  # the model's own inference thread (see models.cache)


def recon_block(kspace: np.ndarray, *, crop: tuple[int, int] | None) -> np.ndarray:
    """``(n, coils, ky, kx)`` complex64 → ``(n, h, w)`` float32 root-sum-of-squares images."""
    from radflow.tasks.recon import kspace_to_image

    return kspace_to_image(kspace, coil_axis=1, crop=crop)


def qc_block(recon: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-slice NMSE, PSNR (dB) and SSIM of ``recon`` against ``reference`` (both ``(n, h, w)``);
    ``(n, 3)`` float64, NaN where the reference is empty."""
    from radflow.tasks.quality import nmse, psnr, ssim

    out = np.full((recon.shape[0], 3), np.nan)
    for i in range(recon.shape[0]):
        ref = reference[i].astype(np.float64)
        if ref.max() <= 0:
            continue
        rec = recon[i].astype(np.float64)
        out[i] = (nmse(ref, rec), psnr(ref, rec), ssim(ref, rec))
    return out


def fbp_block(sinograms: np.ndarray, *, theta: tuple[float, ...], output_size: int) -> np.ndarray:
    """``(n, n_det, n_angles)`` float32 sinograms → ``(n, output_size, output_size)`` float32 FBP images."""
    from radflow.tasks.recon import fbp

    if sinograms.shape[0] == 0:
        return np.zeros((0, output_size, output_size), np.float32)
    return fbp(sinograms, np.asarray(theta), output_size=output_size).astype(np.float32, copy=False)
