"""CT series reassembled into volumes: slice order by position (not file name or InstanceNumber),
affine and spacing from the geometry, duplicate positions and uneven spacing reported."""

from __future__ import annotations

import numpy as np
import pytest

import radflow
from radflow.synth.series import write_ct_series

pytestmark = pytest.mark.slow


def test_ct_series_become_volumes(tmp_path, prefect_api, dask_client):
    _, expected = write_ct_series(tmp_path / "ct" / "a", slices=12, duplicate=5, seed=1)
    _, uneven = write_ct_series(tmp_path / "ct" / "b", slices=8, skip=(3,), seed=2, origin=(0.0, 0.0, 50.0))
    store = str(tmp_path / "ct.zarr")
    radflow.ingest(str(tmp_path / "ct"), store)
    out = radflow.process(store, steps=["volumes"])
    assert out["steps"]["volumes"]["volumes"] == 2
    st = radflow.open_store(store)
    vols = st.volumes().sort_values("slices", ascending=False).reset_index(drop=True)
    a, b = vols.iloc[0], vols.iloc[1]
    assert (a["slices"], a["rows"], a["cols"]) == (12, 64, 64) and a["duplicate_positions"] == 1
    assert not a["uneven_spacing"] and a["tilt_degrees"] == 0.0
    assert (a["spacing_z"], a["spacing_y"], a["spacing_x"]) == pytest.approx((2.5, 0.8, 0.8))
    array, affine = st.volume(a["key"])
    np.testing.assert_array_equal(array, expected)  # position order, first copy of the duplicate kept
    np.testing.assert_allclose(affine, [[0, 0, 0.8, -25.0], [0, 0.8, 0, -25.0], [2.5, 0, 0, -100.0], [0, 0, 0, 1]])
    # voxel (z=4, y=10, x=20) sits at the patient position the geometry says
    np.testing.assert_allclose(affine @ [4, 10, 20, 1], [-25 + 20 * 0.8, -25 + 10 * 0.8, -100 + 4 * 2.5, 1])
    assert b["slices"] == 7 and b["uneven_spacing"]
    np.testing.assert_array_equal(st.volume(b["key"])[0], uneven)


def test_enhanced_multiframe_ct_uses_functional_groups(tmp_path, prefect_api, dask_client):
    import os
    import shutil

    import data_store
    import pydicom

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
