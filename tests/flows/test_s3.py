"""Ingest from and to s3:// against a moto S3 server on a free loopback port."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

import radflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(s3_server):
    import s3fs

    opts = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("radflow-test")
    return fs, opts


def _objects(fs, prefix):
    return {p: info.get("ETag") for p, info in fs.find(prefix, detail=True).items()}


def test_ingest_s3_to_s3_and_read_back(s3, small_archive, prefect_api, dask_client, tmp_path):
    fs, opts = s3
    local = sorted(os.path.join(d, f) for d, _, files in os.walk(small_archive.dicom) for f in files)[:10]
    for p in local:
        fs.put_file(p, "radflow-test/archive/" + os.path.relpath(p, small_archive.dicom))
    from radflow.synth.kspace import write_fastmri

    (h5,) = write_fastmri(tmp_path / "mr", 1, slices=2, coils=2, shape=(64, 64), crop=(48, 48))
    fs.put_file(h5, "radflow-test/archive/mr/file0000.h5")
    summary = radflow.ingest("s3://radflow-test/archive", "s3://radflow-test/store.zarr", storage_options=opts)
    assert summary["discovered"] == 11
    st = radflow.open_store("s3://radflow-test/store.zarr", storage_options=opts)
    ledger = st.ledger()
    assert len(ledger) == 11 and ledger["source"].str.startswith("s3://radflow-test/archive/").all()
    inst = st.instances()
    assert len(inst) + 2 == summary["frames"] and len(st.kspace()) == 2
    assert summary["ok"] == len(set(inst["source"])) + 1
    for _, row in inst.iterrows():
        rel = row["source"].split("/archive/", 1)[1]
        ref = pydicom.dcmread(os.path.join(small_archive.dicom, rel)).pixel_array
        np.testing.assert_array_equal(st.raw_frame(int(row["index"])), ref)
    # shards, not files, make the objects
    n_raw = len([p for p in fs.find("radflow-test/store.zarr/raw") if "/c/" in p])
    assert n_raw < len(inst)
    before = _objects(fs, "radflow-test/store.zarr")
    again = radflow.ingest("s3://radflow-test/archive", "s3://radflow-test/store.zarr", storage_options=opts)
    assert again["new"] == 0 and _objects(fs, "radflow-test/store.zarr") == before
    out = radflow.process("s3://radflow-test/store.zarr", steps=["preprocess", "features", "reconstruct"], canvas=64,
                          storage_options=opts)
    assert out["steps"]["preprocess"]["frames"] == len(inst) and out["steps"]["reconstruct"]["frames"] == 2
    feats = st.features()
    assert (feats["kind"] == "image").sum() == len(inst) and (feats["kind"] == "kspace").sum() == 2


def test_local_source_to_s3_store_with_environment_endpoint(s3, small_archive, prefect_api, dask_client, tmp_path):
    """The store URL alone plus AWS_* in the environment (set by the s3_server fixture) is enough to read."""
    fs, opts = s3
    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=21, sizes=((512, 512),), broken=False)
    radflow.ingest(a.dicom, "s3://radflow-test/env.zarr", storage_options=opts)
    st = radflow.open_store("s3://radflow-test/env.zarr")  # endpoint and credentials from AWS_* variables
    assert len(st.instances()) == 3
    assert st.raw_frame(0).shape == (512, 512)


def test_transient_faults_are_retried_and_content_is_unchanged(s3, s3_server, prefect_api, dask_client, tmp_path):
    """Ingest and process through a proxy that answers 503 SlowDown, resets connections and cuts
    response bodies short on every 8th request: the runs complete and the store's content digest
    equals a fault-free run's. A 403 is not retried."""
    import time

    from radflow.synth import write_archive
    from tests.s3faults import FaultProxy

    fs, opts = s3
    a = write_archive(tmp_path / "a", 6, seed=31, sizes=((512, 512), (600, 480)), broken=True)
    stores = {}
    with FaultProxy(s3_server, every=8) as proxy:
        for name, endpoint in (("clean", s3_server), ("faulty", proxy.url)):
            o = {**opts, "endpoint_url": endpoint}
            url = f"s3://radflow-test/{name}.zarr"
            radflow.ingest(a.dicom, url, storage_options=o, settings={"shard_target_mib": 1})
            radflow.process(url, steps=["preprocess", "features"], canvas=64, storage_options=o)
            stores[name] = url
        faults = dict(proxy.injected)
    # the 403 and 404 probes through a proxy of their own that injects nothing: no connection the faulty
    # phase reset or left pooled is reused, and their requests are counted exactly
    with FaultProxy(s3_server, every=4) as proxy:
        proxy.enabled = False
        t0 = time.monotonic()
        from radflow.store.urls import filesystem

        pfs, path = filesystem("s3://radflow-test/forbidden/key", {**opts, "endpoint_url": proxy.url, "skip_instance_cache": True})
        with pytest.raises(PermissionError):
            pfs.cat_file(path)
        denied_seconds = time.monotonic() - t0
        denied = {p: n for p, n in proxy.requests.items() if "forbidden" in p}
        mfs, missing = filesystem("s3://radflow-test/no-such-key", {**opts, "endpoint_url": proxy.url, "skip_instance_cache": True})
        with pytest.raises(FileNotFoundError):
            mfs.cat_file(missing)
        not_found = proxy.requests["/radflow-test/no-such-key"]
    clean, faulty = (radflow.digest(stores[n], storage_options=opts) for n in ("clean", "faulty"))
    print(f"\nS3 faults injected: {faults}; 403 raised in {denied_seconds:.2f} s; requests per denied key {denied}; 404 after {not_found} request(s)")
    assert min(faults.get(f, 0) for f in ("slowdown", "reset", "truncate")) >= 5
    assert faulty == clean
    # a 403 is not retried by the retry policy (its 10 attempts would show here). Through the faulty phase's
    # proxy the same key was requested 1 to 20 times across runs before PermissionError (connections that
    # phase reset or left pooled); through a fresh proxy it is requested once or twice
    assert list(denied) == ["/radflow-test/forbidden/key"] and 1 <= denied["/radflow-test/forbidden/key"] < 10
    assert not_found == 1  # a 404 is not retried either
    assert radflow.verify(stores["faulty"], storage_options=opts)["problems"] == []
