"""fastMRI-format k-space: ingest beside DICOM, reconstruct on Dask, QC against the reference."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import radflow
from radflow.synth.kspace import write_fastmri
from radflow.tasks.recon import kspace_to_image

pytestmark = pytest.mark.slow


def test_kspace_ingest_reconstruct_qc(tmp_path, prefect_api, dask_client):
    paths = write_fastmri(tmp_path / "mr", 2, slices=3, coils=4, shape=(96, 96), crop=(64, 64), seed=4)
    (tmp_path / "mr" / "broken.h5").write_bytes(open(paths[0], "rb").read()[:3000])
    store = str(tmp_path / "k.zarr")
    summary = radflow.ingest(str(tmp_path / "mr"), store)
    st = radflow.open_store(store)
    ledger = st.ledger().set_index("source")
    assert ledger.loc[str(tmp_path / "mr" / "broken.h5"), "reason"] == "TRUNCATED"
    assert (ledger.loc[paths, "status"] == "ok").all() and summary["ok"] == 2
    table = st.kspace()
    assert len(table) == 6 and table["kspace_index"].is_unique
    assert "SYNTH-MR" not in table.to_csv()  # the file's patient_id is pseudonymized
    for _, row in table.iterrows():
        with h5py.File(row["source"]) as h5:
            np.testing.assert_array_equal(st.kspace_slice(int(row["kspace_index"])), h5["kspace"][int(row["slice"])])
    out = radflow.process(store, steps=["reconstruct"])
    assert out["steps"]["reconstruct"]["frames"] == 6
    with h5py.File(paths[1]) as h5:
        expected = kspace_to_image(h5["kspace"][()], crop=(64, 64))
    row = table[(table["source"] == paths[1]) & (table["slice"] == 2)].iloc[0]
    np.testing.assert_allclose(st.kspace_slice(int(row["kspace_index"]), recon=True), expected[2], rtol=1e-5)
    qc = st.features()
    qc = qc[qc["kind"] == "kspace"]
    assert len(qc) == 6 and (qc["nmse"] < 1e-6).all() and (qc["ssim"] > 0.999).all()
    again = radflow.process(store, steps=["reconstruct"])
    assert again["steps"]["reconstruct"]["frames"] == 0


def test_sinogram_ingest_fbp_stage(tmp_path, prefect_api, dask_client):
    from radflow.synth.sinograms import write_sinograms
    from radflow.tasks.recon import fbp

    paths = write_sinograms(tmp_path / "ct", 2, slices=2, size=64, angles=90, seed=2)
    store = str(tmp_path / "ct.zarr")
    radflow.ingest(str(tmp_path / "ct"), store)
    st = radflow.open_store(store)
    table = st.sinograms()
    assert len(table) == 4 and "SYNTH-CT" not in table.to_csv()
    out = radflow.process(store, steps=["reconstruct"])
    assert out["steps"]["reconstruct"]["frames"] == 4
    with h5py.File(paths[0]) as h5:
        expected = fbp(h5["sinogram"][1], h5["theta"][()], output_size=64)
        phantom = h5["reference"][1]
    row = table[(table["source"] == paths[0]) & (table["slice"] == 1)].iloc[0]
    got = st.sinogram_slice(int(row["sinogram_index"]), recon=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    qc = st.features()
    qc = qc[qc["kind"] == "sinogram"]
    assert len(qc) == 4 and (qc["ssim"] > 0.3).all() and (qc["nmse"] < 0.2).all()
    assert np.corrcoef(got.ravel(), phantom.ravel())[0, 1] > 0.9
