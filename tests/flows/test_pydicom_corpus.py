"""pydicom's bundled test files and the pydicom-data package, ingested together.

Every frame that pydicom decodes (with its validation set to raise, as radflow reads) is
stored bit-exact or reported as a duplicate of a stored instance; every file has exactly one
ledger row, and every non-ok row a reason. Files that only pydicom's lenient mode reads are
rejected as ``INVALID_VALUE``/``SYNTAX_MISMATCH``/``TRUNCATED`` and stored under ``validation=warn``.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

import numpy as np
import pydicom
import pytest

import radflow
from radflow.config import Limits
from radflow.storage.dicom import decode_frames, header_from_dataset, read_dataset

pytestmark = pytest.mark.slow


def _pydicom_data_dir() -> str:
    import data_store

    return os.path.join(os.path.dirname(data_store.__file__), "data")


def test_real_world_corpus(tmp_path, pydicom_test_files, prefect_api, dask_client):
    from radflow.config import Settings, resolve_secret_key
    from radflow.storage.pseudonym import remap_uid

    corpus = tmp_path / "corpus"
    shutil.copytree(pydicom_test_files, corpus / "pydicom")
    shutil.copytree(_pydicom_data_dir(), corpus / "pydicom-data")
    key = resolve_secret_key(Settings())
    store = str(tmp_path / "corpus.zarr")
    summary = radflow.ingest(str(corpus), store)
    st = radflow.open_store(store)
    ledger = st.ledger()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(corpus) for f in fs if not f.startswith("."))
    assert sorted(ledger["source"]) == files
    assert ledger["status"].isin(["ok", "rejected", "duplicate"]).all()
    assert ledger.loc[ledger["status"] != "ok", "reason"].notna().all()
    inst = st.instances()
    ok_sources = set(ledger.loc[ledger["status"] == "ok", "source"])
    dups = ledger[ledger["status"] == "duplicate"].set_index("source")
    assert dups["reason"].isin(["DUPLICATE_IDENTICAL", "DUPLICATE_CONFLICT"]).all()
    decodable = duplicates = 0
    lenient_only = []
    for path in files:
        try:
            with pydicom.config.strict_reading():
                ds = pydicom.dcmread(path)
                for _ in ds.iterall():
                    pass
            ref = ds.pixel_array
        except Exception:
            try:
                pydicom.dcmread(path).pixel_array
                lenient_only.append(path)
            except Exception:
                pass
            continue
        decodable += 1
        if path in dups.index:  # a later copy of a stored instance: the first copy is kept
            duplicates += 1
            sop = remap_uid(key, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
            stored = inst[inst["sop_uid"] == sop].sort_values("frame")
            assert len(stored) > 0 and path not in set(stored["source"])
            if dups.loc[path, "reason"] == "DUPLICATE_IDENTICAL":
                pixels = np.stack([st.raw_frame(int(i)) for i in stored["index"]])
                np.testing.assert_array_equal(pixels.reshape(ref.shape), ref, err_msg=path)
            continue
        assert path in ok_sources, f"{os.path.basename(path)} decodes in pydicom but was rejected"
        rows = inst[inst["source"] == path].sort_values("frame")
        nframes = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
        assert len(rows) == nframes
        frames = ref.reshape((nframes, *ref.shape[-3:])) if rows.iloc[0]["samples"] > 1 else ref.reshape(
            (nframes, int(rows.iloc[0]["rows"]), int(rows.iloc[0]["cols"])))
        for (_, row), expected in zip(rows.iterrows(), frames):
            np.testing.assert_array_equal(st.raw_frame(int(row["index"])), expected, err_msg=path)
    assert decodable >= 90 and summary["ok"] == len(ok_sources) and duplicates == len(dups) > 0
    assert radflow.verify(store)["problems"] == []
    strict = ledger.set_index("source").loc[lenient_only]
    assert strict["reason"].isin(["INVALID_VALUE", "SYNTAX_MISMATCH", "TRUNCATED", "DUPLICATE_CONFLICT"]).all(), strict
    assert (strict["reason"] == "INVALID_VALUE").sum() >= 5
    # pydicom's lenient mode reads them: so does radflow's
    for path in lenient_only:
        ds = read_dataset(open(path, "rb").read(), validation="warn")
        if path not in dups.index:
            decode_frames(ds, header_from_dataset(ds, Limits(validation="warn")))
    table = Counter(f"{s}:{r}" if s != "ok" else "ok" for s, r in zip(ledger["status"], ledger["reason"].fillna("")))
    print(f"\ncorpus: {len(files)} files, {decodable} decodable by pydicom, {len(ok_sources)} stored bit-exact "
          f"({len(inst)} frames), {len(dups)} duplicates, {len(lenient_only)} read only leniently; " + ", ".join(f"{k} {v}" for k, v in sorted(table.items())))
