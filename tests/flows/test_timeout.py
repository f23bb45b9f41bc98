"""A file that hangs its decoder ends as TIMEOUT: the worker's deadline ends the hung process,
its nanny restarts it, the flow probes the batch's inputs one by one, every other file is stored.

The hang is real: a decoder plugin that never returns is installed for JPEG-LS Lossless on every
worker (also on the restarted ones) through a WorkerPlugin; this module is the plugin module.
"""

from __future__ import annotations

import os
import shutil
import time

import dask
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

import radflow
from tests.helpers import KILLING_CLUSTER

# bounded by pytest-timeout, not by a wall-clock assertion: on a loaded 2-core machine each worker
# restart takes tens of seconds; a cluster left without workers ends the run (cluster.waiting)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DECODER_DEPENDENCIES: dict = {}


def is_available(uid) -> bool:  # pydicom decoder-plugin API
    return True


def hang(src, runner):  # pydicom decoder-plugin API: never returns
    while True:
        time.sleep(1)


class HangingJPEGLS(WorkerPlugin):
    name = "hanging-jpeg-ls"

    def setup(self, worker) -> None:
        from pydicom.pixels.decoders.base import get_decoder
        from pydicom.uid import JPEGLSLossless

        dec = get_decoder(JPEGLSLossless)
        for label in list(dec._available):
            dec.remove_plugin(label)
        dec.add_plugin("hang", (__name__, "hang"))


def test_input_that_hangs_its_decoder_is_timeout(tmp_path, pydicom_test_files, prefect_api, dask_client):
    from distributed import Client, LocalCluster
    from distributed.client import _set_global_client

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=5, sizes=((256, 256),), broken=False)
    hung = os.path.join(a.dicom, "hang.dcm")
    shutil.copy(os.path.join(pydicom_test_files, "MR_small_jpeg_ls_lossless.dcm"), hung)
    store = str(tmp_path / "hang.zarr")
    try:
        with dask.config.set(KILLING_CLUSTER), \
                LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            client.register_plugin(HangingJPEGLS())
            summary = radflow.ingest(a.dicom, store, cluster=cluster.scheduler_address,
                                     settings={"limits": {"input_timeout_s": 3}})
    finally:
        _set_global_client(dask_client)
    ledger = radflow.open_store(store).ledger().set_index("source")
    assert ledger.loc[hung, "reason"] == "TIMEOUT" and "input_timeout_s" in ledger.loc[hung, "detail"]
    assert (ledger.drop(index=[hung])["status"] == "ok").all()
    assert summary["ok"] == 3 and summary["rejected"] == {"TIMEOUT": 1} and len(ledger) == 4
    assert radflow.verify(store)["problems"] == []
