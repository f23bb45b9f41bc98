"""Stage ``features``: per-frame image statistics of ``images`` (intensity, contrast, sharpness, spectrum)
into ``features`` parts ``<lo>``, one per range."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pandas as pd

from radflow.stages._images import canvas_of, image_ranges, stored_chunks, unit_float
from radflow.stages.base import Job, Range, Request, Stage, fingerprint, instance_rows, register
from radflow.store.tables import write_part
from radflow.tasks.features import FEATURES, block_features

__all__ = ["Features", "range_features"]

#: frames of a stored chunk converted to float32 at once for their features
FRAMES_AT_ONCE = 4


def range_features(chunks: Iterable[tuple[int, np.ndarray]], geometry: np.ndarray, *, canvas: int,
                   cutoff: float) -> np.ndarray:
    """:func:`~radflow.tasks.features.block_features` of a range given as ``(offset, frames as stored)``
    chunks, :data:`FRAMES_AT_ONCE` frames made float32 at a time (the range whole as float32 was twice its
    stored size per task thread); ``geometry`` is the range's ``(n, 2)`` native rows, cols."""
    feats = np.full((len(geometry), len(FEATURES)), np.nan)
    for offset, stored in chunks:
        for a in range(0, len(stored), FRAMES_AT_ONCE):
            at = slice(offset + a, offset + min(a + FRAMES_AT_ONCE, len(stored)))
            feats[at] = block_features(unit_float(stored[a:a + FRAMES_AT_ONCE]), geometry[at], canvas=canvas,
                                       cutoff=cutoff)
    return feats


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    canvas: int
    cutoff: float


class Features(Stage):
    name = "features"
    order = 30
    reads = ("images", "instances")
    writes = ("features",)
    description = "image statistics per frame"

    def prepare(self, request: Request) -> Job | None:
        if not len(request.frame_index) or "images" not in request.store.root:
            return None
        cutoff = request.settings.spectral_cutoff
        return Job(self, request.store.url, request.store.storage_options, self.name, fingerprint(cutoff),
                   FeatureOptions(canvas_of(request), cutoff), after="preprocess")

    def plan(self, job: Job, request: Request) -> list[Range]:
        return image_ranges(request)

    def run(self, job: Job, rng: Range) -> int:
        opt: FeatureOptions = job.options
        rows = instance_rows(job, rng, ["index", "rows", "cols"])
        geometry = np.zeros((rng.hi - rng.lo, 2), dtype=np.int64)
        geometry[rows["index"].to_numpy() - rng.lo] = rows[["rows", "cols"]].to_numpy()
        feats = range_features(((lo - rng.lo, b) for lo, b in stored_chunks(job, rng)), geometry, canvas=opt.canvas,
                               cutoff=opt.cutoff)
        valid = geometry[:, 0] > 0
        df = pd.DataFrame(np.asarray(feats)[valid], columns=list(FEATURES))
        df.insert(0, "index", np.arange(rng.lo, rng.hi)[valid])
        df.insert(0, "kind", "image")
        write_part(job.store, "features", rng.part, df, storage_options=job.storage_options)
        return int(valid.sum())


register(Features)
