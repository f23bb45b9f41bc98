"""A file that kills its worker every time ends as WORKER_LOST; every other file succeeds; the run completes."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

import radflow
from tests.helpers import KILLING_CLUSTER

pytestmark = pytest.mark.slow


def _inflation_bomb(path: str, side: int = 14000, syntax=DeflatedExplicitVRLittleEndian) -> None:
    """A small object whose pixels decode to side² × 2 bytes: a deflated dataset (kills the worker
    while its header is read) or RLE pixel data (header fine, kills the worker while decoding)."""
    from pydicom.pixels.utils import compress
    from pydicom.uid import RLELossless

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if syntax != RLELossless else "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if syntax == RLELossless:
        compress(ds, RLELossless, np.zeros((side, side), np.uint16), encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = np.zeros((side, side), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_input_that_kills_its_worker_is_worker_lost(tmp_path, prefect_api, dask_client):
    from distributed import LocalCluster
    from distributed.client import _set_global_client

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 4, seed=13, sizes=((512, 512),), broken=False)
    from pydicom.uid import RLELossless

    _inflation_bomb(os.path.join(a.dicom, "bomb.dcm"))
    _inflation_bomb(os.path.join(a.dicom, "p00001", "rle_bomb.dcm"), syntax=RLELossless)
    store = str(tmp_path / "lost.zarr")
    try:
        with dask.config.set(KILLING_CLUSTER), \
                LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="450MB", processes=True,
                             host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
            summary = radflow.ingest(a.dicom, store, cluster=cluster.scheduler_address,
                                     # the header check would call the RLE bomb MEMORY_LIMIT (tests/flows/test_accounting):
                                     # a worker said to have 1 TiB lets it reach the decoder, to kill the worker there
                                     settings={"limits": {"max_frame_pixels": 10**9, "worker_memory_bytes": 2**40}})
    finally:
        _set_global_client(dask_client)
    ledger = radflow.open_store(store).ledger().set_index("source")
    bombs = [os.path.join(a.dicom, "bomb.dcm"), os.path.join(a.dicom, "p00001", "rle_bomb.dcm")]
    assert list(ledger.loc[bombs, "reason"]) == ["WORKER_LOST", "WORKER_LOST"]  # at header reading, at decoding
    assert "header" in ledger.loc[bombs[0], "detail"] and "decoding" in ledger.loc[bombs[1], "detail"]
    assert (ledger.drop(index=bombs)["status"] == "ok").all()
    assert summary["ok"] == 4 and summary["rejected"] == {"WORKER_LOST": 2} and len(ledger) == 6
    st = radflow.open_store(store)
    assert len(st.instances()) == 4 and radflow.verify(store)["problems"] == []


def _multiframe(path: str, frames: int, side: int = 512) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.Modality = generate_uid(), generate_uid(), "P-POISON", "OT"
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (frames, side, side), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("memory, reason", [(0, "WORKER_LOST"), (8 * 2**20, "MEMORY_LIMIT")])
def test_an_input_that_kills_its_batch_but_not_alone_is_left_out(tmp_path, prefect_api, dask_client, monkeypatch,
                                                                   memory, reason):
    """The probing path converges: an input that decodes alone but whose batch keeps killing its worker
    (a batch holds more in memory than one input decoded on its own) gets one ledger row, and the run
    completes with every other input of its batch stored."""
    from distributed import LocalCluster
    from distributed.client import _set_global_client

    import radflow.flows.ingest as ingest_module
    from radflow.synth import write_archive
    from tests.helpers import write_batch_that_dies_in_company

    a = write_archive(tmp_path / "a", 5, seed=17, sizes=((512, 512),), broken=False)
    poison = os.path.join(a.dicom, "poison.dcm")
    _multiframe(poison, frames=3)
    monkeypatch.setattr(ingest_module, "write_batch", write_batch_that_dies_in_company)
    store = str(tmp_path / "poison.zarr")
    try:
        with dask.config.set(KILLING_CLUSTER), \
                LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address="127.0.0.1:0") as cluster:
            summary = radflow.ingest(a.dicom, store, cluster=cluster.scheduler_address,
                                     settings={"limits": {"worker_memory_bytes": memory}})
    finally:
        _set_global_client(dask_client)
    ledger = radflow.open_store(store).ledger().set_index("source")
    assert len(ledger) == 6 and ledger.loc[poison, "reason"] == reason, ledger[["status", "reason"]]
    assert "every attempt" in ledger.loc[poison, "detail"]
    assert (ledger.drop(index=[poison])["status"] == "ok").all()
    assert summary["ok"] == 5 and summary["rejected"] == {reason: 1}
    assert radflow.verify(store)["problems"] == []
