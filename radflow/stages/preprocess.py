"""Stage ``preprocess``: ``raw/…`` → ``images`` (resize to the canvas, modality and VOI LUTs, normalize,
MONOCHROME1 inverted, optional denoise/enhance). One range = whole ``images`` shards, written in one
operation by the one worker that owns them."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from radflow.stages._images import canvas_of, image_ranges, open_array
from radflow.stages.base import Job, Range, Request, Stage, fingerprint, instance_rows, register
from radflow.store import layout
from radflow.store.shards import ShardReader
from radflow.store.tables import read_table
from radflow.store.urls import zarr_store
from radflow.tasks.preprocess import Enhancements, FrameParams, prepare_frame

__all__ = ["Preprocess", "PreprocessOptions", "frame_luts"]

_COLUMNS = ["index", "sop_uid", "raw_array", "raw_position", "rows", "cols", "rescale_slope", "rescale_intercept",
            "window_center", "window_width", "photometric"]


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    canvas: int
    method: str
    dtype: str
    enhancements: Enhancements


def frame_luts(rows: pd.DataFrame, luts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """SOP Instance UID → LUT-sequence parameters for :class:`~radflow.tasks.preprocess.FrameParams`."""
    by_sop: dict[str, dict[str, Any]] = {}
    for row in luts.itertuples(index=False):
        data = np.asarray(row.data, dtype=np.float32)
        value = (int(row.first_mapped), data) if row.kind == "modality" else (int(row.first_mapped), int(row.bits), data)
        by_sop.setdefault(row.sop_uid, {})[f"{row.kind}_lut"] = value
    return {s: by_sop[s] for s in set(rows["sop_uid"]) if s in by_sop}


def frame_params(row: Any, luts: dict[str, Any]) -> FrameParams:
    def number(value: Any, default: float) -> float:
        return default if value is None or pd.isna(value) else float(value)

    return FrameParams(
        rows=int(row.rows), cols=int(row.cols),
        rescale_slope=number(row.rescale_slope, 1.0), rescale_intercept=number(row.rescale_intercept, 0.0),
        window_center=number(row.window_center, float("nan")), window_width=number(row.window_width, float("nan")),
        monochrome1=row.photometric == "MONOCHROME1", **luts.get(row.sop_uid, {}),
    )


#: the fewest shards (ranges) a new ``images`` array is cut into where its frames allow (down to one chunk
#: per shard): enough tasks for the task threads of a small cluster, with room to balance them
SPREAD = 16


def shard_frames(n: int, chunk: int, chunk_bytes: int, target_mib: int) -> int:
    """Frames per shard of a new ``images`` array of ``n`` frames: about ``target_mib``, or fewer where that
    leaves fewer than :data:`SPREAD` shards (a shard is one range, one task: a small store's work then still
    spreads over the workers), never less than one chunk."""
    return chunk * max(1, min((target_mib * 2**20) // chunk_bytes, -(-n // (SPREAD * chunk))))


class Preprocess(Stage):
    name = "preprocess"
    order = 10
    reads = ("raw/*", "instances", "luts")
    writes = ("images",)
    description = "raw frames → fixed-canvas analysis-ready images"

    def prepare(self, request: Request) -> Job | None:
        if not len(request.frame_index):
            return None
        cfg = request.settings
        canvas = canvas_of(request)
        chunk = cfg.infer_batch
        chunk_bytes = chunk * canvas * canvas * np.dtype(cfg.image_dtype).itemsize
        root = layout.open_root(zarr_store(request.store.url, request.store.storage_options), mode="r+")
        n = int(request.frame_index[-1]) + 1
        layout.ensure_images_array(root, n=n, canvas=canvas, dtype=cfg.image_dtype, chunk_frames=chunk,
                                   shard_frames=shard_frames(n, chunk, chunk_bytes, cfg.shard_target_mib))
        enh = Enhancements(cfg.denoise, cfg.denoise_size, cfg.enhance, cfg.clahe_clip, cfg.unsharp_amount)
        options = PreprocessOptions(canvas, cfg.resize_method, cfg.image_dtype, enh)
        key = fingerprint(canvas, cfg.resize_method, cfg.image_dtype, dataclasses.asdict(enh))
        return Job(self, request.store.url, request.store.storage_options, self.name, key, options)

    def plan(self, job: Job, request: Request) -> list[Range]:
        return image_ranges(request)

    def run(self, job: Job, rng: Range) -> int:
        opt: PreprocessOptions = job.options
        rows = instance_rows(job, rng, _COLUMNS)
        luts = read_table(job.store, "luts", job.storage_options, filters=[("sop_uid", "in", list(rows["sop_uid"]))]) \
            if len(rows) else pd.DataFrame()
        luts = frame_luts(rows, luts) if len(luts) else {}
        out = np.zeros((rng.hi - rng.lo, opt.canvas, opt.canvas), dtype=opt.dtype)
        raw = {name: ShardReader(open_array(job, f"raw/{name}")) for name in set(rows["raw_array"])}  # once per range
        for row in rows.itertuples(index=False):
            frame = raw[row.raw_array].frame(int(row.raw_position))
            img = prepare_frame(frame, frame_params(row, luts), opt.canvas, opt.method, opt.enhancements)
            if out.dtype == np.uint16:
                img = np.round(img * 65535.0)
            out[int(row.index) - rng.lo] = img.astype(out.dtype)
        images = open_array(job, "images", "r+").with_config({"write_empty_chunks": True})
        images[rng.lo:rng.hi] = out  # whole shards in one write
        return len(rows)


register(Preprocess)
