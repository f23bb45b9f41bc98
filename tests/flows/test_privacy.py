"""Nothing identifying leaves radflow: a canary corpus (a distinct canary in every attribute of
DICOM PS3.15 Table E.1-1, in sequences and private tags, and in the input paths) is ingested and
processed by the CLI in a fresh process on two workers; then every byte it wrote — store,
tables (decoded), Zarr attributes, its logs, Prefect's database (logs, artifacts, parameters),
temporary and Dask spill folders — is scanned for the canaries."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

import radflow
from radflow.synth.canary import SAFE_PRIVATE, write_canary_corpus

pytestmark = pytest.mark.slow

KEY = "canary-test-key-0123456789abcdef"


def _scan(root: str, patterns: list[bytes]) -> tuple[Counter, int, int, set[str]]:
    """Count pattern hits in every file under ``root``; Parquet files are also scanned decoded
    (their pages are compressed). Returns hits, files, bytes scanned and the files with hits."""
    hits: Counter = Counter()
    files = scanned = 0
    where = set()
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            try:
                blobs = [open(path, "rb").read()]
            except OSError:
                continue
            if name.endswith(".parquet"):
                blobs.append(pq.read_table(path).to_pandas().to_csv().encode())
            files += 1
            for blob in blobs:
                scanned += len(blob)
                for p in patterns:
                    if p in blob:
                        hits[p] += blob.count(p)
                        where.add(os.path.relpath(path, root))
    return hits, files, scanned, where


def _model(path: str) -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    torch.jit.script(net).save(path)


def test_no_canary_in_any_output(tmp_path):
    corpus = write_canary_corpus(tmp_path / "src", n_patients=2, studies=3)
    run = tmp_path / "run"
    for sub in ("tmp", "dask", "prefect", "logs"):
        (run / sub).mkdir(parents=True)
    store = str(run / "store.zarr")
    model = str(tmp_path / "model.pt")
    _model(model)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADFLOW_", "DASK_"))}
    env.update(
        TMPDIR=str(run / "tmp"), DASK_TEMPORARY_DIRECTORY=str(run / "dask"), PREFECT_HOME=str(run / "prefect"),
        RADFLOW_SECRET_KEY=KEY, RADFLOW_PRIVACY__HASH_SOURCES="true",
        RADFLOW_PRIVACY__PRIVATE_ALLOWLIST=f'["{SAFE_PRIVATE[0]}"]', RADFLOW_CLUSTER__N_WORKERS="2",
        RADFLOW_CLUSTER__DASHBOARD_ADDRESS="127.0.0.1:0",
    )
    commands = {
        "run": ["run", corpus.root, store, "--model", model, "--canvas", "64", "--steps", "preprocess,features,infer"],
        "inspect": ["inspect", store],
        "verify": ["verify", store],
    }
    from radflow.flows._kept_api import stop_kept

    try:
        for name, args in commands.items():
            with open(run / "logs" / f"{name}.log", "wb") as log:
                proc = subprocess.run([sys.executable, "-m", "radflow", "--verbose", *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=600, cwd=tmp_path)
            assert proc.returncode == 0, (run / "logs" / f"{name}.log").read_text()[-3000:]
    finally:
        stop_kept(str(run / "prefect"))  # the local Prefect API these commands kept up

    st = radflow.open_store(store)
    ledger = st.ledger()
    reasons = set(ledger["reason"].dropna())
    assert {"TRUNCATED", "NON_IMAGE"} <= reasons
    # invalid values and a syntax mismatch are kept and recorded (their headers go through de-identification)
    kept = {a.split(" ", 1)[0] for found in ledger["anomalies"] for a in found}
    assert {"INVALID_VALUE", "SYNTAX_MISMATCH_REPAIRED"} <= kept
    assert reasons & {"DUPLICATE_IDENTICAL", "DUPLICATE_CONFLICT"}
    assert ledger["source"].str.startswith("hmac-sha256:").all() and len(ledger) == len(corpus.files)
    assert st.privacy["mode"] == "deidentify" and st.privacy["source_paths"] == "hashed"
    assert st.privacy["patient_identity_removed"] == "YES"
    assert len(st.predictions()) == len(st.instances()) > 0 and len(st.features()) > 0
    assert "privacy  deidentify" in (run / "logs" / "inspect.log").read_text()
    import re

    dashboards = set(re.findall(r"Dask dashboard: (\S+)", (run / "logs" / "run.log").read_text()))
    assert len(dashboards) == 1, dashboards  # `run` ingests and processes on one cluster

    # the scan: positive controls first (the patterns are there in the inputs, and decoded tables are scanned)
    patterns = corpus.patterns
    src_hits, _, _, _ = _scan(corpus.root, patterns)
    assert all(src_hits[p] > 0 for p in patterns)
    safe, _, _, safe_where = _scan(run, [SAFE_PRIVATE[1].encode()])
    assert safe and any(w.startswith("store.zarr/tables/headers") for w in safe_where)
    hits, files, scanned, where = _scan(run, patterns)
    print(f"\nprivacy scan: {files} files, {scanned / 1e6:.1f} MB scanned (Parquet also decoded), "
          f"{len(corpus.canaried)} Table E.1-1 attributes canaried, {sum(hits.values())} canaries found")
    assert not hits, f"canaries {dict(hits)} found in {sorted(where)}"
    listing = sorted(os.path.relpath(os.path.join(d, n), run) for d, _, ns in os.walk(run) for n in ns)
    assert files > 15 and any(x.startswith("prefect/") for x in listing), listing
    logged, _, _, _ = _scan(run / "prefect", [b"inputs discovered", b"radflow-ingest"])
    assert len(logged) == 2  # Prefect's database holds the runs' logs and names: it was scanned for real

    # dates: each patient's study intervals survive the shift exactly
    headers = st.headers(parse=True)
    by_patient: dict[str, list[dt.date]] = {}
    for ds in headers["dataset"]:
        by_patient.setdefault(ds.PatientID, []).append(dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date())
    # distinct dates: the corpus's invalid-value and syntax-mismatch copies (kept, with anomalies) repeat a study's date
    originals = sorted(sorted({dt.datetime.strptime(x, "%Y%m%d").date() for x in v}) for v in corpus.study_dates.values())
    got = sorted(sorted(set(v)) for v in by_patient.values())
    assert len(got) == len(originals)
    for o, g in zip(originals, got):
        assert [b - a for a, b in zip(o, o[1:])] == [b - a for a, b in zip(g, g[1:])] and o != g


def test_uids_consistent_across_runs_and_workers_and_opt_out_is_explicit(tmp_path, prefect_api, dask_client,
                                                                         monkeypatch):
    from radflow.errors import StoreFormatError

    monkeypatch.setenv("RADFLOW_SECRET_KEY", KEY)
    corpus = write_canary_corpus(tmp_path / "src", n_patients=3, studies=2)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    radflow.ingest(corpus.root, a, settings={"max_files_per_batch": 1})  # one input per batch: both workers write
    radflow.ingest(corpus.root, b)
    ia, ib = radflow.open_store(a).instances(), radflow.open_store(b).instances()
    assert ia["batch"].nunique() > 1
    cols = ["sop_uid", "series_uid", "study_key", "patient_key", "frame_of_reference"]
    key = lambda df: sorted(map(tuple, df[cols].astype(str).values))  # noqa: E731
    assert key(ia) == key(ib)
    assert ia["sop_uid"].nunique() == len(ia) and ia["patient_key"].nunique() == 3
    ha = radflow.open_store(a).headers(parse=True)
    assert {d.SOPInstanceUID for d in ha["dataset"]} == set(ia["sop_uid"])
    assert all(d.StudyInstanceUID.startswith("2.25.") for d in ha["dataset"])

    with pytest.raises(StoreFormatError, match="privacy mode"):
        radflow.ingest(corpus.root, a, settings={"privacy": {"mode": "keep-identifiers"}})
    kept = str(tmp_path / "kept.zarr")
    radflow.ingest(corpus.root, kept, settings={"privacy": {"mode": "keep-identifiers"}})
    st = radflow.open_store(kept)
    assert st.privacy["mode"] == "keep-identifiers" and st.privacy["patient_identity_removed"] == "NO"
    assert any(d.PatientID.startswith("CANARY") for d in st.headers(parse=True)["dataset"])
    from radflow.store.inspect import describe

    assert describe(kept)["privacy"]["mode"] == "keep-identifiers"


def test_burned_in_flags_and_configured_masks(tmp_path, prefect_api, dask_client):
    import numpy as np

    from tests.dicom.test_read import make_dicom

    src = tmp_path / "src"
    src.mkdir()
    (src / "us.dcm").write_bytes(make_dicom(rows=32, cols=40, Modality="US"))
    (src / "cr.dcm").write_bytes(make_dicom(rows=32, cols=40, Modality="CR"))
    (src / "sc.dcm").write_bytes(make_dicom(rows=32, cols=40, Modality="CR", ImageType=["DERIVED", "SECONDARY"]))
    store = str(tmp_path / "m.zarr")
    radflow.ingest(str(src), store, settings={"privacy": {"masks": {"US": [[0, 0, 8, 40], [20, 30, 32, 40]]}}})
    st = radflow.open_store(store)
    inst = st.instances().assign(name=lambda d: d["source"].map(os.path.basename)).set_index("name")
    assert inst.loc["us.dcm", "burned_in_rule"] == "Modality US" and inst.loc["us.dcm", "masked"]
    assert inst.loc["sc.dcm", "burned_in_rule"] == "ImageType SECONDARY" and not inst.loc["sc.dcm", "masked"]
    assert not inst.loc["cr.dcm", "burned_in_risk"]
    us = st.raw_frame(int(inst.loc["us.dcm", "index"]))
    original = (np.arange(32 * 40) % 251).astype(np.uint16).reshape(32, 40)
    assert (us[:8] == 0).all() and (us[20:, 30:] == 0).all()
    np.testing.assert_array_equal(us[8:20], original[8:20])
    np.testing.assert_array_equal(st.raw_frame(int(inst.loc["cr.dcm", "index"])), original)
    assert st.privacy["masks"] == {"US": [[0, 0, 8, 40], [20, 30, 32, 40]]}
    assert radflow.verify(store)["problems"] == []
