"""CT series reassembled into volumes: slice order by position (not file name or InstanceNumber),
affine and spacing from the geometry, duplicate positions reported; series with a missing slice or
uneven spacing split into regular parts so no slice is placed where its header does not say; the
regular cases compared with dcm2niix as a second reference."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import numpy as np
import pydicom
import pytest

import radflow
from radflow.synth.series import write_ct_series

pytestmark = pytest.mark.slow


def test_ct_series_become_volumes(tmp_path, prefect_api, dask_client):
    _, expected = write_ct_series(tmp_path / "ct" / "a", slices=12, duplicate=5, seed=1)
    _, gapped = write_ct_series(tmp_path / "ct" / "b", slices=8, skip=(3,), seed=2, origin=(0.0, 0.0, 50.0))
    store = str(tmp_path / "ct.zarr")
    radflow.ingest(str(tmp_path / "ct"), store)
    out = radflow.process(store, steps=["volumes"])
    assert out["steps"]["volumes"]["volumes"] == 3  # series b is split at its missing slice
    st = radflow.open_store(store)
    vols = st.volumes()
    a = vols[vols["slices"] == 12].iloc[0]
    assert (a["slices"], a["rows"], a["cols"]) == (12, 64, 64) and a["duplicate_positions"] == 1
    assert not a["uneven_spacing"] and a["tilt_degrees"] == 0.0 and a["missing_slices"] == 0
    assert (a["spacing_z"], a["spacing_y"], a["spacing_x"]) == pytest.approx((2.5, 0.8, 0.8))
    array, affine = st.volume(a["key"])
    np.testing.assert_array_equal(array, expected)  # position order, first copy of the duplicate kept
    np.testing.assert_allclose(affine, [[0, 0, 0.8, -25.0], [0, 0.8, 0, -25.0], [2.5, 0, 0, -100.0], [0, 0, 0, 1]])
    # voxel (z=4, y=10, x=20) sits at the patient position the geometry says
    np.testing.assert_allclose(affine @ [4, 10, 20, 1], [-25 + 20 * 0.8, -25 + 10 * 0.8, -100 + 4 * 2.5, 1])
    b = vols[vols["slices"] < 12].sort_values("part")
    assert list(b["slices"]) == [3, 4] and b["missing_slices"].eq(1).all() and b["uneven_spacing"].all()
    assert b["parts"].eq(2).all() and b["step_max"].iloc[0] == pytest.approx(5.0)
    parts = [st.volume(k)[0] for k in b["key"]]
    np.testing.assert_array_equal(np.concatenate(parts), gapped)


def test_enhanced_multiframe_ct_uses_functional_groups(tmp_path, prefect_api, dask_client):
    import data_store

    src = os.path.join(os.path.dirname(data_store.__file__), "data", "eCT_Supplemental.dcm")
    (tmp_path / "ect").mkdir()
    shutil.copy(src, tmp_path / "ect" / "ect.dcm")
    store = str(tmp_path / "ect.zarr")
    radflow.ingest(str(tmp_path / "ect"), store)
    radflow.process(store, steps=["volumes"])
    st = radflow.open_store(store)
    (key,) = st.volumes()["key"]
    array, affine = st.volume(key)
    ds = pydicom.dcmread(src)
    # the slice normal is row × column = (-1, 0, 0) × (0, 1, 0) = (0, 0, -1): ordered along it, the frame at
    # z = -149 comes first
    np.testing.assert_array_equal(array, ds.pixel_array[::-1])
    np.testing.assert_allclose(affine[:3, 3], [99.5, -301.5, -149.0])
    np.testing.assert_allclose(affine[:3, 0], [0, 0, -10.0])
    np.testing.assert_allclose(affine[:3, 2], [-0.388672, 0, 0], rtol=1e-5)  # row direction is -x


CASES = {  # name: write_ct_series arguments
    "regular": dict(slices=10),
    "regular-thin": dict(slices=10, spacing=0.625, origin=(-10.0, 20.0, 5.0)),
    "missing-slice": dict(slices=10, skip=(4,)),
    "uneven": dict(slices=8, offsets=(0.0, 2.5, 5.0, 8.2, 10.7, 13.2, 14.4, 16.9)),
    "tilt-15": dict(slices=10, tilt=15.0),
}


def _nifti_slice_origins(path: str) -> np.ndarray:
    """Patient positions (LPS, mm) of voxel (0, 0, k) of every slice k of a NIfTI-1 file's sform."""
    with open(path, "rb") as fh:
        head = fh.read(348)
    dims = struct.unpack("<8h", head[40:56])
    srow = np.array(struct.unpack("<12f", head[280:328]), dtype=np.float64).reshape(3, 4)
    ras = np.array([srow @ [0, 0, k, 1] for k in range(dims[3])])
    return ras * [-1, -1, 1]  # RAS → LPS


def _header_positions(folder) -> np.ndarray:
    return np.array([[float(v) for v in pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True).ImagePositionPatient]
                     for f in sorted(os.listdir(folder))])


def _max_distance(placed: np.ndarray, headers: np.ndarray, normal: np.ndarray) -> float:
    """Largest distance along the normal between the k-th placed slice and the k-th header slice (both in
    position order); inf when the slice counts differ."""
    if len(placed) != len(headers):
        return float("inf")
    a, b = np.sort(placed @ normal), np.sort(headers @ normal)
    return float(np.max(np.abs(a - b)))


def test_every_slice_is_where_its_header_says(tmp_path, prefect_api, dask_client):
    for name, kwargs in CASES.items():
        write_ct_series(tmp_path / "series" / name, seed=hash(name) % 1000, **kwargs)
    store = str(tmp_path / "geo.zarr")
    radflow.ingest(str(tmp_path / "series"), store)
    radflow.process(store, steps=["volumes"])
    st = radflow.open_store(store)
    vols = st.volumes()
    inst = st.instances().set_index("index")
    table = []
    for name, kwargs in CASES.items():
        folder = tmp_path / "series" / name
        headers = _header_positions(folder)
        srcs = {str(folder / f) for f in os.listdir(folder)}
        mine = []
        for key in vols["key"]:
            attrs = dict(st.root[f"volumes/{key}"].attrs)
            if not set(inst.loc[attrs["indices"], "source"]) <= srcs:
                continue
            affine = np.asarray(attrs["affine"])
            positions = np.asarray(attrs["positions"])
            normal = np.cross(affine[:3, 2], affine[:3, 1])
            normal /= np.linalg.norm(normal)
            ipp = inst.loc[attrs["indices"], ["ipp_x", "ipp_y", "ipp_z"]].to_numpy(float)
            np.testing.assert_allclose(positions, ipp, atol=1e-6)  # each slice's own position is kept
            np.testing.assert_allclose(attrs["slice_locations"], ipp @ normal, atol=1e-6)
            # the affine's slice step along the normal equals spacing_z
            assert affine[:3, 0] @ normal == pytest.approx(attrs["spacing"][0], abs=1e-9)
            mine.append(np.array([affine @ [k, 0, 0, 1] for k in range(len(positions))])[:, :3])
            row = vols.set_index("key").loc[key]
            if name == "missing-slice":
                assert row["missing_slices"] == 1 and row["parts"] == 2
            if name == "uneven":
                assert row["uneven_spacing"] and row["step_min"] == pytest.approx(1.2) and row["step_max"] == pytest.approx(3.2)
            if name == "tilt-15":
                assert row["tilt_degrees"] == pytest.approx(15.0, abs=1e-3)
        placed = np.concatenate(mine)
        radflow_mm = float(np.max(np.linalg.norm(np.sort(placed, axis=0) - np.sort(headers, axis=0), axis=1)))
        assert len(placed) == len(headers) and radflow_mm < 1e-3, (name, radflow_mm)
        table.append((name, radflow_mm, _dcm2niix(tmp_path / "nii" / name, folder, headers)))
    for name, mine_mm, theirs_mm in table:
        if name.startswith("regular") and theirs_mm is not None:
            assert theirs_mm < 1e-3, (name, theirs_mm)  # the second reference agrees where the series is regular
    print("\ncase            radflow max mm   dcm2niix max mm")
    for name, mine_mm, theirs_mm in table:
        print(f"{name:<15} {mine_mm:>14.4f}   {'not run' if theirs_mm is None else f'{theirs_mm:.4f}':>15}")


def _dcm2niix(out, folder, headers: np.ndarray) -> float | None:
    """dcm2niix's placement error (mm along the normal, over its first NIfTI of the series); None without dcm2niix."""
    if not shutil.which("dcm2niix"):
        if os.environ.get("CI"):
            pytest.fail("dcm2niix is not installed (make test installs Debian's dcm2niix)")
        return None
    out.mkdir(parents=True)
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "%s_%z", "-o", str(out), str(folder)],
                   check=True, capture_output=True, timeout=120)
    niftis = sorted(p for p in os.listdir(out) if p.endswith(".nii") and "Tilt" not in p and "Eq" not in p)
    ds = pydicom.dcmread(os.path.join(folder, sorted(os.listdir(folder))[0]), stop_before_pixels=True)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return _max_distance(np.concatenate([_nifti_slice_origins(os.path.join(out, n)) for n in niftis]), headers, normal)
