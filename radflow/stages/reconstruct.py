"""Stage ``reconstruct``: every ingested k-space array (inverse FFT, root-sum-of-squares over coils) and
sinogram array (filtered back-projection) into ``recon/<name>``, shard by shard; with the file's
reference images, per-slice NMSE, PSNR and SSIM into ``features`` part ``<kind>-<name>``.
One range = one acquisition array."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radflow.stages._images import open_array
from radflow.stages.base import Job, Range, Request, Stage, fingerprint, register
from radflow.store import layout
from radflow.store.layout import KINDS, kind_of_array, reference_path
from radflow.store.tables import read_table, write_part
from radflow.store.urls import zarr_store

__all__ = ["Reconstruct", "recon_block", "fbp_block", "qc_block"]


def recon_block(kspace: np.ndarray, *, crop: tuple[int, int] | None) -> np.ndarray:
    """``(n, coils, ky, kx)`` complex64 → ``(n, h, w)`` float32 root-sum-of-squares images."""
    from radflow.tasks.recon import kspace_to_image

    return kspace_to_image(kspace, coil_axis=1, crop=crop)


def fbp_block(sinograms: np.ndarray, *, theta: tuple[float, ...], output_size: int) -> np.ndarray:
    """``(n, n_det, n_angles)`` float32 sinograms → ``(n, output_size, output_size)`` float32 FBP images."""
    from radflow.tasks.recon import fbp

    if sinograms.shape[0] == 0:
        return np.zeros((0, output_size, output_size), np.float32)
    return fbp(sinograms, np.asarray(theta), output_size=output_size).astype(np.float32, copy=False)


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


class Reconstruct(Stage):
    name = "reconstruct"
    order = 40
    reads = ("kspace/*", "sinograms/*", "reference/*", "kspace", "sinograms")
    writes = ("recon/*", "features")
    description = "k-space and sinograms → images, with QC against the file's reference"

    def prepare(self, request: Request) -> Job | None:
        if not any(k.group in request.store.root for k in KINDS.values()):
            return None
        return Job(self, request.store.url, request.store.storage_options, self.name, fingerprint("reconstruct", 1))

    def plan(self, job: Job, request: Request) -> list[Range]:
        root = layout.open_root(zarr_store(job.store, job.storage_options), mode="r+")
        out = []
        for kind in KINDS.values():
            arrays = read_table(job.store, kind.table, job.storage_options, columns=["array"])
            for array, count in sorted(arrays["array"].value_counts().items()) if len(arrays) else []:
                src = root[array]
                ref = reference_path(array)
                if kind.kind == "kspace":
                    shape = tuple(root[ref].shape[1:]) if ref in root else tuple(src.shape[2:])
                else:
                    size = int(root[ref].shape[1]) if ref in root else int(src.shape[1])
                    shape = (size, size)
                recon = layout.ensure_frames_array(root, f"recon/{array.split('/', 1)[1]}", dtype="float32", shape=shape,
                                                   fps=int(src.attrs["frames_per_shard"]), codec="zstd", zstd_level=1, kind="recon",
                                                   dims=("slice", "y", "x"))
                if recon.shape[0] < src.shape[0]:
                    recon.resize((src.shape[0], *shape))
                out.append(Range(array.replace("/", "-"), 0, int(src.shape[0]), int(count),
                                 fingerprint(array, int(count), int(src.shape[0])), data=array))
        return out

    def run(self, job: Job, rng: Range) -> int:
        array: str = rng.data
        kind = kind_of_array(array)
        name = array.split("/", 1)[1]
        src = open_array(job, array)
        recon = open_array(job, f"recon/{name}", "r+").with_config({"write_empty_chunks": True})
        try:
            ref = open_array(job, reference_path(array))
        except KeyError:
            ref = None
        fps = int(src.attrs["frames_per_shard"])
        qc = np.full((rng.hi, 3), np.nan)
        for s in range(0, rng.hi, fps):  # one shard of slices at a time, written whole
            block = np.asarray(src[s:s + fps])
            if kind.kind == "kspace":
                img = recon_block(block, crop=tuple(recon.shape[1:]) if ref is not None else None)
            else:
                img = fbp_block(block, theta=tuple(src.attrs["theta"]), output_size=int(recon.shape[1]))
            recon[s:s + len(img)] = img
            if ref is not None:
                qc[s:s + len(img)] = qc_block(img, np.asarray(ref[s:s + len(img)]))
        rows = read_table(job.store, kind.table, job.storage_options, filters=[("array", "==", array)])
        if ref is not None and len(rows):
            rows = rows.sort_values(kind.index_col).reset_index(drop=True)
            pos = rows["position"].to_numpy()
            df = rows[[kind.index_col, "source", "slice"]].copy()
            df.insert(0, "kind", kind.kind)
            df["nmse"], df["psnr"], df["ssim"] = qc[pos, 0], qc[pos, 1], qc[pos, 2]
            write_part(job.store, "features", f"{kind.kind}-{name}", pd.DataFrame(df), storage_options=job.storage_options)
        return len(rows)


register(Reconstruct)
