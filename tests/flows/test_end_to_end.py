"""Ingest → process end to end on a real local Dask cluster under Prefect's local API."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
import torch

import radflow
from radflow.store.layout import FRAME_CHECKSUM, frame_crc32
from radflow.models.loading import ModelSpec, load_model, save_model
from radflow.tasks.infer import ModelCard, predict
from radflow.tasks.train import build_model
from tests.helpers import tree_digest, tree_mtimes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, small_archive, prefect_api, dask_client):
    store = str(tmp_path_factory.mktemp("e2e") / "store.zarr")
    summary = radflow.ingest(small_archive.dicom, store)
    return store, summary


def _files_under(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_ledger_accounts_for_every_input(ingested, small_archive):
    store, summary = ingested
    st = radflow.open_store(store)
    ledger = st.ledger()
    inputs = _files_under(small_archive.dicom)
    assert sorted(ledger["source"]) == inputs  # conservation: exactly one row per input
    assert summary["discovered"] == len(inputs) == summary["new"]
    ok = ledger[ledger["status"] == "ok"]
    assert len(ok) == small_archive.images == summary["ok"]
    rejected = ledger[ledger["status"] != "ok"].set_index("source")["reason"]
    by_kind = {os.path.basename(s).split("_")[0]: r for s, r in rejected.items()}
    assert by_kind == {"truncated": "TRUNCATED", "not": "NOT_DICOM", "report": "NON_IMAGE"}
    assert (ok["sha256"].str.len() == 64).all()


def test_the_summary_splits_the_workers_time_by_phase(ingested, dask_client):
    """Every phase of the data path is accounted for, each a part of its batches' time (no clock in it
    runs twice over one stretch)."""
    from radflow.ingest.batches import PHASES

    _, summary = ingested
    spent = summary["phase_seconds"]
    assert list(spent) == list(PHASES) and all(v >= 0 for v in spent.values()), spent
    assert spent["read"] > 0 and spent["decode"] > 0 and spent["write"] > 0
    threads = sum(dask_client.nthreads().values())
    assert sum(spent.values()) <= summary["seconds"] * threads  # worker seconds within the run's


def test_stored_frames_are_bit_exact(ingested):
    store, _ = ingested
    st = radflow.open_store(store)
    inst = st.instances()
    assert inst["index"].is_unique
    for _, row in inst.iterrows():
        ref = pydicom.dcmread(row["source"]).pixel_array
        got = st.raw_frame(int(row["index"]))
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        assert frame_crc32(got, FRAME_CHECKSUM) == row["crc32"]  # a new store records CRC-32C
    assert set(inst["decoder"]) <= {"pydicom", "pylibjpeg", "gdcm"}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"} & set(inst["transfer_syntax"])


def test_tables_hold_no_identifiers_in_clear(ingested, small_archive):
    store, _ = ingested
    st = radflow.open_store(store)
    inst = st.instances()
    sample = pydicom.dcmread(inst["source"][0], stop_before_pixels=True)
    text = inst.to_csv() + st.ledger().to_csv() + str(st.meta)
    for value in (sample.PatientID, str(sample.PatientName), sample.StudyInstanceUID, sample.SOPInstanceUID,
                  sample.PatientBirthDate, sample.AccessionNumber):
        assert value not in text
    assert inst["sop_uid"].str.startswith("2.25.").all()
    assert inst.groupby("patient_key")["study_key"].nunique().max() >= 1


def test_second_ingest_writes_nothing(ingested, small_archive):
    store, _ = ingested
    before_digest, before_mtimes = tree_digest(store), tree_mtimes(store)
    summary = radflow.ingest(small_archive.dicom, store)
    assert summary["new"] == 0 and summary["frames"] == 0
    assert tree_digest(store) == before_digest and tree_mtimes(store) == before_mtimes


def test_process_preprocess_infer_features(ingested, tmp_path):
    store, _ = ingested
    card = ModelCard(name="tiny", arch="resnet18", labels=("lesion", "other"), input_size=64, channels=3,
                     mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    model_path = str(tmp_path / "tiny.pt")
    sha = save_model(build_model(card).eval(), card, model_path)
    summary = radflow.process(store, steps=["preprocess", "infer", "features"], model=model_path, canvas=128)
    st = radflow.open_store(store)
    inst = st.instances()
    n = len(inst)
    assert summary["steps"]["preprocess"]["frames"] == n
    imgs = st.images
    assert imgs.shape == (int(inst["index"].max()) + 1, 128, 128) and imgs.dtype == np.float16
    ds = st.dataset()
    assert ds["images"].shape == (n, 128, 128) and ds["images"].chunks is not None
    assert list(ds["sop_uid"].values) == list(inst["sop_uid"])
    x = np.asarray(ds["images"].values, dtype=np.float32)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    preds = st.predictions()
    assert len(preds) == n and (preds["model_sha256"] == sha).all()
    assert set(preds.columns) >= {"index", "patient_key", "sop_uid", "p_lesion", "p_other", "model"}
    direct = predict(load_model(ModelSpec(model_path)).module, x, card)
    np.testing.assert_allclose(preds.sort_values("index")[["p_lesion", "p_other"]].to_numpy(), direct, atol=1e-4)
    feats = st.features()
    assert len(feats) == n and feats["mean"].between(0, 1).all() and feats.notna().all().all()
    # the stage takes each range a chunk at a time, a few frames as float32 at once: the values of the kernel
    # over the whole array at once
    from radflow.tasks.features import FEATURES, block_features

    geometry = np.zeros((imgs.shape[0], 2), dtype=np.int64)
    geometry[inst["index"].to_numpy()] = inst[["rows", "cols"]].to_numpy()
    whole = block_features(np.asarray(imgs[:], np.float32), geometry, canvas=128)
    np.testing.assert_array_equal(feats.sort_values("index")[list(FEATURES)].to_numpy(), whole[np.sort(inst["index"])])
    merged = inst.merge(feats, on="index").merge(preds, on=["index", "sop_uid", "patient_key", "study_key"])
    assert len(merged) == n
    # a second run has nothing left to do
    again = radflow.process(store, steps=["preprocess", "infer", "features"], model=model_path)
    assert all(v["frames"] == 0 for v in again["steps"].values())
    # changed preprocessing settings redo preprocessing and what derives from it
    before = np.asarray(st.images[0], np.float32)
    changed = radflow.process(store, steps=["preprocess", "features"], settings={"enhance": "clahe"})
    assert changed["steps"]["preprocess"]["frames"] == n and changed["steps"]["features"]["frames"] == n
    assert not np.allclose(np.asarray(st.images[0], np.float32), before)


def test_incremental_ingest_appends_new_inputs(tmp_path, small_archive, prefect_api, dask_client):
    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 6, seed=11, sizes=((512, 512),), broken=False)
    store = str(tmp_path / "inc.zarr")
    first = radflow.ingest(a.dicom, store)
    assert first["ok"] == 6
    extra = write_archive(tmp_path / "b", 4, seed=12, sizes=((512, 512), (600, 480)), broken=False)
    os.rename(extra.dicom, os.path.join(a.dicom, "more"))
    second = radflow.ingest(a.dicom, store)
    assert second["new"] == 4 and second["ok"] == 4
    st = radflow.open_store(store)
    inst = st.instances()
    assert len(inst) == 10 and inst["index"].is_unique and len(st.ledger()) == 10
    for i in inst["index"]:
        assert st.raw_frame(int(i)).shape[0] > 0


def test_duplicates_identical_and_conflicting(tmp_path, prefect_api, dask_client):
    """The same instance again (in another transfer syntax) and a different image under the same UID."""
    import pydicom
    from pydicom.pixels.utils import compress
    from pydicom.uid import RLELossless

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=8, sizes=((512, 512),), broken=False)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.dicom) for f in fs)
    ds = pydicom.dcmread(files[0])
    compress(ds, RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    ds.save_as(os.path.join(a.dicom, "zz_same_as_first_rle.dcm"))
    other = pydicom.dcmread(files[1])
    other.SOPInstanceUID = ds.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    other.save_as(os.path.join(a.dicom, "zz_conflict.dcm"))
    store = str(tmp_path / "dup.zarr")
    summary = radflow.ingest(a.dicom, store)
    st = radflow.open_store(store)
    ledger = st.ledger().set_index("source")
    assert ledger.loc[os.path.join(a.dicom, "zz_same_as_first_rle.dcm"), "reason"] == "DUPLICATE_IDENTICAL"
    assert ledger.loc[os.path.join(a.dicom, "zz_conflict.dcm"), "reason"] == "DUPLICATE_CONFLICT"
    assert (ledger.loc[files, "status"] == "ok").all() and len(ledger) == 5
    assert summary["duplicates"] == {"DUPLICATE_CONFLICT": 1, "DUPLICATE_IDENTICAL": 1}
    inst = st.instances()
    assert len(inst) == 3 and inst["sop_uid"].is_unique
    first = inst[inst["source"] == files[0]].iloc[0]
    np.testing.assert_array_equal(st.raw_frame(int(first["index"])), pydicom.dcmread(files[0]).pixel_array)
    # a later copy arriving in another run is compared with the stored one too
    extra = tmp_path / "b"
    extra.mkdir()
    pydicom.dcmread(files[2]).save_as(extra / "copy.dcm")
    os.rename(extra / "copy.dcm", os.path.join(a.dicom, "zzz_late_copy.dcm"))
    again = radflow.ingest(a.dicom, store)
    assert again["new"] == 1 and again["duplicates"] == {"DUPLICATE_IDENTICAL": 1} and again["frames"] == 0


def test_lut_sequences_recorded_and_applied(tmp_path, prefect_api, dask_client):
    import shutil

    import data_store
    from pydicom.pixels import apply_modality_lut

    from radflow.tasks.preprocess import FrameParams, prepare_frame

    data = os.path.join(os.path.dirname(data_store.__file__), "data")
    src = tmp_path / "luts"
    src.mkdir()
    for name in ("mlut_18.dcm", "vlut_04.dcm"):
        shutil.copy(os.path.join(data, name), src / name)
    store = str(tmp_path / "luts.zarr")
    radflow.ingest(str(src), store)
    radflow.process(store, steps=["preprocess"], canvas=64)
    st = radflow.open_store(store)
    inst = st.instances().set_index("source")
    m, v = inst.loc[str(src / "mlut_18.dcm")], inst.loc[str(src / "vlut_04.dcm")]
    assert m["modality_lut"] and not m["voi_lut"] and v["voi_lut"]
    luts = st.table("luts")
    ds = pydicom.dcmread(src / "mlut_18.dcm")
    row = luts[(luts["sop_uid"] == m["sop_uid"]) & (luts["kind"] == "modality")].iloc[0]
    assert list(row["data"]) == list(ds.ModalityLUTSequence[0].LUTData) and row["first_mapped"] == -2048
    # preprocessing used the LUT: the stored image equals the pipeline on pydicom's own modality-LUT output
    expected = prepare_frame(apply_modality_lut(ds.pixel_array, ds).astype(np.float32),
                             FrameParams(rows=ds.Rows, cols=ds.Columns), 64)
    np.testing.assert_allclose(np.asarray(st.images[int(m["index"])], np.float32), expected, atol=2e-3)
