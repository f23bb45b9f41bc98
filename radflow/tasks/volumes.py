"""Assembling CT/MR slices into volumes: grouping, ordering along the slice normal, geometry.

Pure functions over the ``instances`` table (no pixel I/O). Slices are grouped by
series and split where orientation, acquisition number or frame size differ; within a
group they are ordered by position along the slice normal (never by InstanceNumber),
duplicate positions keep the first stored frame and are reported, and uneven spacing
and gantry tilt are detected and recorded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["VolumePlan", "plan_volumes", "VOLUME_MODALITIES"]

VOLUME_MODALITIES = ("CT", "MR", "PT", "NM")
_IOP = [f"iop_{i}" for i in range(6)]


@dataclass
class VolumePlan:
    """One volume: the frame indices in slice order and its geometry.

    ``affine`` maps voxel indices ``(z, y, x, 1)`` to patient coordinates in mm (LPS).
    """

    key: str
    series_uid: str
    indices: list[int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (z, y, x) mm; z is the median step along the normal
    affine: list[list[float]]
    uneven_spacing: bool
    tilt_degrees: float
    duplicates: list[int] = field(default_factory=list)  # frame indices dropped for a repeated position

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "series_uid": self.series_uid, "slices": self.shape[0], "rows": self.shape[1],
                "cols": self.shape[2], "spacing_z": self.spacing[0], "spacing_y": self.spacing[1],
                "spacing_x": self.spacing[2], "uneven_spacing": self.uneven_spacing, "tilt_degrees": self.tilt_degrees,
                "duplicate_positions": len(self.duplicates), "affine": [v for row in self.affine for v in row]}


def _plan_group(series: str, part: int, g: pd.DataFrame, tol_mm: float) -> VolumePlan | None:
    iop = g[_IOP].iloc[0].to_numpy(float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = g[["ipp_x", "ipp_y", "ipp_z"]].to_numpy(float)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    g, pos, along = g.iloc[order], pos[order], along[order]
    keep, dups = [0], []
    for i in range(1, len(g)):
        if abs(along[i] - along[keep[-1]]) <= tol_mm:
            dups.append(int(g["index"].iloc[i]))  # first stored frame wins (lower index sorts first on ties)
        else:
            keep.append(i)
    g, pos, along = g.iloc[keep], pos[keep], along[keep]
    if len(g) < 2:
        return None
    steps = np.diff(along)
    dz = float(np.median(steps))
    uneven = bool(np.max(np.abs(steps - dz)) > max(0.01 * dz, 1e-3))
    step_vec = (pos[-1] - pos[0]) / (len(pos) - 1)
    cosang = float(np.clip(abs(step_vec @ normal) / max(np.linalg.norm(step_vec), 1e-12), -1, 1))
    tilt = math.degrees(math.acos(cosang))
    dy, dx = float(g["spacing_row"].iloc[0]), float(g["spacing_col"].iloc[0])
    affine = np.eye(4)
    affine[:3, 0] = step_vec  # z index: the actual step between slice origins (includes any tilt)
    affine[:3, 1] = col_dir * dy  # y index (rows) moves along the column direction
    affine[:3, 2] = row_dir * dx  # x index (columns) moves along the row direction
    affine[:3, 3] = pos[0]
    key = f"{hashlib.sha256(series.encode()).hexdigest()[:16]}-{part}"
    return VolumePlan(key, series, [int(i) for i in g["index"]], (len(g), int(g["rows"].iloc[0]), int(g["cols"].iloc[0])),
                      (dz, dy, dx), affine.tolist(), uneven, round(tilt, 4), dups)


def plan_volumes(instances: pd.DataFrame, *, tol_mm: float = 1e-3) -> list[VolumePlan]:
    """Volumes from the ``instances`` table: CT/MR/PT/NM single-sample frames with geometry."""
    need = ["ipp_x", "ipp_y", "ipp_z", *_IOP, "spacing_row", "spacing_col"]
    df = instances[instances["modality"].isin(VOLUME_MODALITIES) & (instances["samples"] == 1)].dropna(subset=need)
    plans: list[VolumePlan] = []
    for series, s in df.sort_values("index").groupby("series_uid", sort=True):
        rounded = s[_IOP].round(3).astype(str).agg("\\".join, axis=1)
        parts = s.assign(_iop=rounded).groupby(["_iop", "acquisition_number", "rows", "cols"], sort=True)
        for part, (_, g) in enumerate(parts):
            plan = _plan_group(str(series), part, g, tol_mm)
            if plan is not None:
                plans.append(plan)
    return plans
