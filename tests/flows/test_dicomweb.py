"""A DICOMweb archive as a source, against a real Orthanc started by the tests (127.0.0.1, free ports).

The archive: synthetic radiographs in several transfer syntaxes plus pydicom's compressed test files,
uploaded through Orthanc's REST API. The same files, laid out by their UIDs, make the folder the
DICOMweb ingest is compared with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pydicom
import pytest

import radflow
from radflow.config import DicomWebSettings
from radflow.ingest import dicomweb
from tests.conftest import TEST_SIZES
from tests.helpers import content_apart_from_place
from tests.orthanc import PASSWORD, USER, FaultProxy, Orthanc

pytestmark = pytest.mark.slow

#: pydicom's files in compressed transfer syntaxes (several share a SOP Instance UID: the first is kept)
COMPRESSED = ("JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "SC_rgb_rle_2frame.dcm",
              "MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm")
#: small runs: several batches, several QIDO pages, quick back-off
SETTINGS = {"max_files_per_batch": 4, "dicomweb": {"page_size": 7, "attempts": 2, "backoff_ms": 50, "max_concurrency": 2}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, pydicom_test_files):
    """Orthanc holding the archive, and the folder of the same files (``<study>/<series>/<sop>``: the order
    of the DICOMweb instance addresses, so both ingests plan the same batches)."""
    from radflow.synth import write_archive

    root = tmp_path_factory.mktemp("dicomweb")
    synth = write_archive(root / "synth", 14, seed=5, sizes=TEST_SIZES, broken=False)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(synth.dicom) for f in fs)
    files += [os.path.join(pydicom_test_files, f) for f in COMPRESSED]
    server = Orthanc(str(root / "orthanc")).start()
    folder = root / "folder"
    kept: dict[str, str] = {}
    try:
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPInstanceUID in kept or server.upload(path) != "Success":
                continue
            kept[ds.SOPInstanceUID] = ds.Modality
            dst = folder / ds.StudyInstanceUID / ds.SeriesInstanceUID / ds.SOPInstanceUID
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
        yield server, str(folder), kept
    finally:
        server.stop()


@pytest.fixture()
def credentials(monkeypatch):
    monkeypatch.setenv("RADFLOW_DICOMWEB__USERNAME", USER)
    monkeypatch.setenv("RADFLOW_DICOMWEB__PASSWORD", PASSWORD)


def test_dicomweb_ingest_equals_a_folder_ingest(tmp_path, archive, credentials, prefect_api, dask_client):
    server, folder, kept = archive
    a, b = str(tmp_path / "folder.zarr"), str(tmp_path / "dicomweb.zarr")
    sa = radflow.ingest(folder, a, settings=SETTINGS)
    sb = radflow.ingest(server.dicomweb, b, settings=SETTINGS)
    assert sb["discovered"] == sa["discovered"] == len(kept) and sb["ok"] == sa["ok"] == len(kept)
    assert sb["frames"] == sa["frames"] and sb["rejected"] == sa["rejected"] == {}
    assert content_apart_from_place(b) == content_apart_from_place(a)  # bit-exact frames, the files' own sha256, the same de-identified headers
    ledger = radflow.open_store(b).table("ledger")
    assert ledger["source"].str.startswith(f"{server.dicomweb}/instances/2.25.").all()  # keyed UIDs only
    for uid in kept:  # no original UID anywhere in the tables
        for name in ("ledger", "instances", "headers"):
            assert not radflow.open_store(b).table(name).astype(str).apply(lambda c: c.str.contains(uid, regex=False)).any().any()
    again = radflow.ingest(server.dicomweb, b, settings=SETTINGS)  # incremental: nothing fetched again
    assert again["new"] == 0 and len(radflow.open_store(b).table("ledger")) == len(kept)


def test_a_query_selects_its_instances_page_by_page(archive, credentials):
    server, _, kept = archive
    want = {uid for uid, modality in kept.items() if modality in ("CT", "MR")}
    assert 0 < len(want) < len(kept)
    settings = DicomWebSettings(username=USER, password=PASSWORD, page_size=2)
    found = dicomweb.search(dicomweb.service_url(server.dicomweb), {"Modality": "CT,MR"}, settings)
    assert {item["00080018"]["Value"][0] for item in found} == want
    refs = dicomweb.discover(server.dicomweb, None, b"k" * 32, DicomWebSettings(username=USER, password=PASSWORD, page_size=3))
    assert len(refs) == len(kept) == len({r.uri for r in refs})  # all of them, over several pages, each once


def test_a_wrong_password_fails_at_once_and_creates_nothing(tmp_path, archive):
    server, _, _ = archive
    store = tmp_path / "never.zarr"
    env = {**os.environ, "RADFLOW_DICOMWEB__USERNAME": USER, "RADFLOW_DICOMWEB__PASSWORD": "not-the-password-qzx4711"}
    out = subprocess.run([sys.executable, "-m", "radflow", "ingest", server.dicomweb, str(store)], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    # (the password's own characters: a free port may hold 4711)
    assert "HTTP 401" in out.stderr and "RADFLOW_DICOMWEB__PASSWORD" in out.stderr and "qzx4711" not in out.stderr
    assert "Traceback" not in out.stderr and not store.exists()
    with pytest.raises(dicomweb.SourceRefused, match="HTTP 401"):
        dicomweb.check(server.dicomweb, DicomWebSettings(username=USER, password="wrong"))
    with pytest.raises(Exception, match="must not carry credentials"):
        dicomweb.service_url(f"dicomweb+http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web")
    with pytest.raises(dicomweb.SourceRefused, match="HTTP 404"):  # not the service root
        dicomweb.check(server.dicomweb.replace("/dicom-web", "/no-such-path"),
                       DicomWebSettings(username=USER, password=PASSWORD))
    secrets_file = tmp_path / "pacs.json"  # credentials from a file (a mounted secret)
    secrets_file.write_text(f'{{"username": "{USER}", "password": "{PASSWORD}"}}')
    dicomweb.check(server.dicomweb, DicomWebSettings(credentials_file=secrets_file))
    from radflow.flows._common import build_settings

    with pytest.raises(Exception, match="not as an option"):  # never a flow parameter
        build_settings({"dicomweb": {"password": PASSWORD}})


def test_busy_answers_are_retried(tmp_path, archive, credentials, prefect_api, dask_client):
    server, _, kept = archive
    with FaultProxy(server.http, every_503=3) as proxy:
        clean = str(tmp_path / "clean.zarr")
        radflow.ingest(server.dicomweb, clean, settings=SETTINGS)
        busy = str(tmp_path / "busy.zarr")
        patient = {**SETTINGS, "dicomweb": {**SETTINGS["dicomweb"], "attempts": 5}}  # every third request is refused
        s = radflow.ingest(proxy.dicomweb, busy, settings=patient)
    assert proxy.injected >= 5 and s["ok"] == len(kept) and s["rejected"] == {}
    # two workers, each task reading ahead on two threads: the run-wide limit of 2 still holds
    assert proxy.most_in_flight <= SETTINGS["dicomweb"]["max_concurrency"]
    assert content_apart_from_place(busy) == content_apart_from_place(clean)


def test_an_instance_that_cannot_be_retrieved_is_io_error_with_its_status(tmp_path, archive, credentials,
                                                                          prefect_api, dask_client):
    server, _, kept = archive
    gone = sorted(kept)[3]
    store = str(tmp_path / "gone.zarr")
    with FaultProxy(server.http) as proxy:
        proxy.missing = {gone}  # listed by QIDO-RS, then 404 on retrieve (deleted in between)
        s = radflow.ingest(proxy.dicomweb, store, settings=SETTINGS)
        assert s["ok"] == len(kept) - 1 and s["rejected"] == {"IO_ERROR": 1}
        ledger = radflow.open_store(store).ledger()
        row = ledger[ledger["status"] == "rejected"].iloc[0]
        assert row["reason"] == "IO_ERROR" and "HTTP 404" in row["detail"] and len(ledger) == len(kept)
        proxy.missing = set()  # back again: the next run tries it again (IO_ERROR is transient)
        again = radflow.ingest(proxy.dicomweb, store, settings=SETTINGS)
    assert again["new"] == 1 and again["ok"] == 1
    assert (radflow.open_store(store).ledger()["status"] == "ok").all()


def test_archive_stopped_mid_transfer_then_rerun(tmp_path, archive, credentials, prefect_api, dask_client):
    server, _, kept = archive
    with FaultProxy(server.http) as proxy:
        whole = str(tmp_path / "whole.zarr")
        one_at_a_time = {**SETTINGS, "dicomweb": {**SETTINGS["dicomweb"], "max_concurrency": 1}}
        radflow.ingest(proxy.dicomweb, whole, settings=one_at_a_time)
        assert proxy.most_in_flight == 1  # the run's limit holds across both workers
        seen = proxy.requests["retrieve"]  # the 7th retrieve of the next run stops the archive
        proxy.on_retrieve = lambda n: server.stop() if n == seen + 7 else None
        cut = str(tmp_path / "cut.zarr")
        try:
            with pytest.raises(Exception, match="stopped answering|unreachable|HTTP 502"):
                radflow.ingest(proxy.dicomweb, cut, settings=SETTINGS)
        finally:
            proxy.on_retrieve = None
            server.start()  # the same storage folder: the same instances
        s = radflow.ingest(proxy.dicomweb, cut, settings=SETTINGS)
    assert 0 < s["ok"] <= len(kept)  # what the first run had not finished (batches of 4: maybe none finished)
    assert radflow.digest(cut)["store"] == radflow.digest(whole)["store"]
    instances = radflow.open_store(cut).table("instances")
    assert not instances.duplicated(["sop_uid", "frame"]).any() and len(instances) == len(radflow.open_store(whole).table("instances"))
    ledger = radflow.open_store(cut).table("ledger")
    assert len(ledger) == len(kept) and (ledger["status"] == "ok").all()  # one row per instance, nothing lost


def _model(path: str) -> str:
    import json

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1))
    torch.jit.script(net).save(path)
    with open(path + ".card.json", "w") as fh:
        json.dump({"labels": ["finding"], "activation": "sigmoid", "name": "tiny-net"}, fh)
    return path


def test_predictions_go_back_to_the_archive_as_structured_reports(tmp_path, archive, credentials, prefect_api,
                                                                   dask_client, monkeypatch):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from radflow.config import Settings, resolve_secret_key
    from radflow.dicom.pseudonym import remap_uid
    from radflow.dicom.sr import report_summary
    from radflow.errors import ConfigError
    from radflow.export.results import export_predictions

    server, folder, kept = archive
    studies = {sop: study for study in os.listdir(folder) for series in os.listdir(os.path.join(folder, study))
               for sop in os.listdir(os.path.join(folder, study, series))}
    store = str(tmp_path / "pred.zarr")
    radflow.ingest(server.dicomweb, store, settings=SETTINGS)
    radflow.process(store, steps=["preprocess", "infer"], canvas=64, model=_model(str(tmp_path / "tiny-net.pt")))
    preds = radflow.open_store(store).predictions()
    predicted = set(preds["sop_uid"])
    assert len(predicted) == len(kept)
    results = Orthanc(str(tmp_path / "results")).start()  # the archive the reports go to
    try:
        out = export_predictions(store, results.dicomweb)
        assert out["matched"] == out["reports"] == out["instances"] == len(kept) and out["not_found"] == 0
        web = DICOMwebClient(results.dicomweb[len("dicomweb+"):], session=create_session_from_user_pass(USER, PASSWORD))
        found = web.search_for_instances(fields=["00080060"])
        assert len(found) == len(kept) and {f["00080060"]["Value"][0] for f in found} == {"SR"}
        key = resolve_secret_key(Settings())
        for item in found:
            sr = web.retrieve_instance(item["0020000D"]["Value"][0], item["0020000E"]["Value"][0],
                                       item["00080018"]["Value"][0])
            summary = report_summary(sr)
            original = set(summary["referenced"])
            assert len(original) == 1 and original <= set(kept)  # re-identified: the archive's own UID
            source_uid = original.pop()
            assert sr.StudyInstanceUID == item["0020000D"]["Value"][0] == studies[source_uid]  # in the image's study
            mine = preds[preds["sop_uid"] == remap_uid(key, source_uid)].sort_values("index")
            assert summary["values"]["p_finding"] == pytest.approx(float(mine["p_finding"].iloc[-1]), rel=1e-6)
            assert "weights sha256 " + mine["model_sha256"].iloc[0] in sr.to_json()
        again = export_predictions(store, results.dicomweb)  # the same UIDs again: nothing doubled
        assert again["reports"] == len(kept) and len(web.search_for_instances()) == len(kept)
    finally:
        results.stop()
    cli = [sys.executable, "-m", "radflow", "export", store, "--predictions", "--to", str(tmp_path / "sr")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "sr").iterdir())
    assert f"{len(kept)} DICOM SR reports for {len(kept)} of {len(kept)} predicted instances" in done.stdout
    assert len(files) == len(kept)
    assert all(pydicom.dcmread(f).Modality == "SR" for f in files)
    copies = tmp_path / "copies"  # the same images as a folder, one of them twice: one report each
    shutil.copytree(folder, copies)
    first = next(p for p in copies.rglob("*") if p.is_file())
    shutil.copyfile(first, first.parent / "copy-of-it")
    again = export_predictions(store, str(tmp_path / "sr-folder"), source=str(copies))
    assert again["reports"] == again["matched"] == len(kept) and again["not_found"] == 0
    assert len(list((tmp_path / "sr-folder").iterdir())) == len(kept)
    monkeypatch.setenv("RADFLOW_SECRET_KEY", "another-key-of-at-least-thirty-two-bytes")
    with pytest.raises(ConfigError, match="another pseudonymization key"):
        export_predictions(store, str(tmp_path / "never"))
