"""Assembling CT/MR slices into volumes: grouping, ordering along the slice normal, geometry.

Pure functions over the ``instances`` table (no pixel I/O). Slices are grouped by
series and split where orientation, acquisition number or frame size differ; within a
group they are ordered by position along the slice normal (never by InstanceNumber),
duplicate positions keep the first stored frame and are reported.

Geometry never misplaces a slice. A volume is a *regular* run of slices: where the step
between neighbours departs from the series' median step (a missing slice, about twice the
median, or uneven spacing), the series is split into regular sub-volumes at that step, so
each sub-volume's affine places every slice where its own Image Position (Patient) says.
Every part of such a series carries the series' flags: ``missing_slices`` (slices absent
from gaps of about k × the median step: k - 1 each), ``uneven_spacing`` and the
minimum/median/maximum step. Each volume also records every slice's position (``positions``:
Image Position (Patient) in mm; ``slice_locations``: that position projected on the normal).
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

    ``affine`` maps voxel indices ``(z, y, x, 1)`` to patient coordinates in mm (LPS); its
    slice column's component along the slice normal equals ``spacing[0]``.
    """

    key: str
    series_uid: str
    indices: list[int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (z, y, x) mm; z is this volume's step along the normal
    affine: list[list[float]]
    uneven_spacing: bool  # the series' steps differ (this volume is a regular part of it)
    tilt_degrees: float
    duplicates: list[int] = field(default_factory=list)  # frame indices dropped for a repeated position
    positions: list[list[float]] = field(default_factory=list)  # (z, 3) Image Position (Patient) per slice, mm
    slice_locations: list[float] = field(default_factory=list)  # (z,) positions along the normal, mm
    missing_slices: int = 0  # slices missing from the series (gaps of about k × the median step)
    steps: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # series step min, median, max (mm)
    part: int = 0  # which regular part of its series (0 when the series is not split)
    parts: int = 1

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "series_uid": self.series_uid, "slices": self.shape[0], "rows": self.shape[1],
                "cols": self.shape[2], "spacing_z": self.spacing[0], "spacing_y": self.spacing[1],
                "spacing_x": self.spacing[2], "uneven_spacing": self.uneven_spacing, "tilt_degrees": self.tilt_degrees,
                "duplicate_positions": len(self.duplicates), "missing_slices": self.missing_slices,
                "step_min": self.steps[0], "step_median": self.steps[1], "step_max": self.steps[2],
                "part": self.part, "parts": self.parts, "slice_locations": list(self.slice_locations),
                "affine": [v for row in self.affine for v in row]}

    def attributes(self) -> dict[str, Any]:
        """The volume array's attributes (geometry, flags and provenance)."""
        return {"kind": "volume", "spacing": list(self.spacing), "affine": self.affine, "indices": self.indices,
                "positions": self.positions, "slice_locations": self.slice_locations,
                "uneven_spacing": self.uneven_spacing, "missing_slices": self.missing_slices,
                "steps": {"min": self.steps[0], "median": self.steps[1], "max": self.steps[2]},
                "part": self.part, "parts": self.parts, "tilt_degrees": self.tilt_degrees,
                "duplicate_positions": self.duplicates}


def _runs(steps: np.ndarray, dz: float, tol: float) -> list[tuple[int, int]]:
    """``[start, stop)`` slice ranges split at every step that departs from ``dz`` by more than ``tol``."""
    cuts = [i + 1 for i, s in enumerate(steps) if abs(s - dz) > tol]
    bounds = [0, *cuts, len(steps) + 1]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _plan_group(series: str, part: int, g: pd.DataFrame, tol_mm: float) -> list[VolumePlan]:
    iop = g[_IOP].iloc[0].to_numpy(float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    normal = normal / max(float(np.linalg.norm(normal)), 1e-12)  # headers round the cosines: make it a unit vector
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
        return []
    steps = np.diff(along)
    dz = float(np.median(steps))
    tol = max(0.01 * dz, tol_mm)
    uneven = bool(np.max(np.abs(steps - dz)) > tol)
    missing = int(sum(round(s / dz) - 1 for s in steps if s > 1.5 * dz))
    stats = (float(steps.min()), dz, float(steps.max()))
    dy, dx = float(g["spacing_row"].iloc[0]), float(g["spacing_col"].iloc[0])
    runs = _runs(steps, dz, tol)
    base = hashlib.sha256(series.encode()).hexdigest()[:16]
    plans = []
    for k, (a, b) in enumerate(runs):
        rp, ra = pos[a:b], along[a:b]
        if b - a > 1:
            dz_run = float((ra[-1] - ra[0]) / (b - a - 1))
            direction = (rp[-1] - rp[0]) / (ra[-1] - ra[0])  # unit component along the normal; carries any tilt
        else:
            dz_run, direction = dz, normal
        cosang = float(np.clip(1.0 / max(np.linalg.norm(direction), 1e-12), -1, 1))
        affine = np.eye(4)
        affine[:3, 0] = direction * dz_run  # z index: one step between slice origins (includes any tilt)
        affine[:3, 1] = col_dir * dy  # y index (rows) moves along the column direction
        affine[:3, 2] = row_dir * dx  # x index (columns) moves along the row direction
        affine[:3, 3] = rp[0]
        rows = g.iloc[a:b]
        key = f"{base}-{part}" if len(runs) == 1 else f"{base}-{part}.{k}"
        plans.append(VolumePlan(
            key, series, [int(i) for i in rows["index"]], (b - a, int(rows["rows"].iloc[0]), int(rows["cols"].iloc[0])),
            (dz_run, dy, dx), affine.tolist(), uneven, round(math.degrees(math.acos(cosang)), 4),
            dups if k == 0 else [], rp.tolist(), [float(v) for v in ra], missing, stats, k, len(runs)))
    return plans


def plan_volumes(instances: pd.DataFrame, *, tol_mm: float = 1e-3) -> list[VolumePlan]:
    """Volumes from the ``instances`` table: CT/MR/PT/NM single-sample frames with geometry."""
    need = ["ipp_x", "ipp_y", "ipp_z", *_IOP, "spacing_row", "spacing_col"]
    df = instances[instances["modality"].isin(VOLUME_MODALITIES) & (instances["samples"] == 1)].dropna(subset=need)
    plans: list[VolumePlan] = []
    for series, s in df.sort_values("index").groupby("series_uid", sort=True):
        rounded = s[_IOP].round(3).astype(str).agg("\\".join, axis=1)
        parts = s.assign(_iop=rounded).groupby(["_iop", "acquisition_number", "rows", "cols"], sort=True)
        for part, (_, g) in enumerate(parts):
            plans += _plan_group(str(series), part, g, tol_mm)
    return plans
