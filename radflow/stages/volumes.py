"""Stage ``volumes``: CT/MR/PT/NM series assembled into ``volumes/<key>`` (slices sorted along the
normal, split into regular parts at gaps), one ``volumes`` table part per volume. One range = one volume."""

from __future__ import annotations

import dataclasses

import pandas as pd

from radflow.stages.base import Job, Range, Request, Stage, fingerprint, register
from radflow.store.tables import read_table, write_part
from radflow.store.volumes import write_volume
from radflow.tasks.volumes import VOLUME_MODALITIES, plan_volumes

__all__ = ["Volumes"]

_PLAN_COLUMNS = ["index", "modality", "samples", "series_uid", "acquisition_number", "rows", "cols",
                 "ipp_x", "ipp_y", "ipp_z", *[f"iop_{i}" for i in range(6)], "spacing_row", "spacing_col"]


class Volumes(Stage):
    name = "volumes"
    order = 50
    unit = "volumes"
    reads = ("raw/*", "instances")
    writes = ("volumes/*", "volumes")
    description = "CT/MR series → (z, y, x) volumes with spacing and affine"

    def prepare(self, request: Request) -> Job | None:
        if not len(request.frame_index):
            return None
        return Job(self, request.store.url, request.store.storage_options, self.name, fingerprint("volumes", 1))

    def plan(self, job: Job, request: Request) -> list[Range]:
        inst = read_table(job.store, "instances", job.storage_options, columns=_PLAN_COLUMNS,
                          filters=[("modality", "in", list(VOLUME_MODALITIES))])
        plans = plan_volumes(inst) if len(inst) else []
        return [Range(p.key, 0, 0, len(p.indices), fingerprint(dataclasses.asdict(p)), data=p) for p in plans]

    def run(self, job: Job, rng: Range) -> int:
        plan = rng.data
        frames = read_table(job.store, "instances", job.storage_options,
                            columns=["index", "raw_array", "raw_position", "rows", "cols"],
                            filters=[("index", "in", [int(i) for i in plan.indices])])
        record = write_volume(job.store, plan, frames, storage_options=job.storage_options)
        write_part(job.store, "volumes", plan.key, pd.DataFrame([record]), storage_options=job.storage_options)
        return int(record["slices"])


register(Volumes)
