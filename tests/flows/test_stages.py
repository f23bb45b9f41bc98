"""The stage registry and its one runner: completion per range in ``tables/stages``, a SIGKILLed
``radflow process`` that resumes to the same content digest, a new stage that runs without any
change to the runner, and workers that read and write their own rows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import radflow
from radflow.stages import Job, Range, Request, Stage, register, registered
from radflow.stages._images import image_ranges, images_block
from radflow.stages.base import fingerprint, instance_rows
from radflow.store.tables import write_part

pytestmark = pytest.mark.slow

#: 2-frame shards at a 512 canvas: many ranges from a small archive
SETTINGS = {"infer_batch": 2, "shard_target_mib": 1}
STEPS = ["preprocess", "features"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, prefect_api, dask_client):
    from radflow.synth import write_archive

    root = tmp_path_factory.mktemp("stages")
    archive = write_archive(root, 24, seed=21, sizes=((512, 512), (600, 480)), broken=False)
    store = str(root / "ingested.zarr")
    radflow.ingest(archive.dicom, store)
    return store


def _copy(store: str, dst) -> str:
    out = str(dst)
    shutil.copytree(store, out)
    return out


def _stage_parts(store: str) -> int:
    try:
        return len(os.listdir(os.path.join(store, "tables", "stages")))
    except FileNotFoundError:
        return 0


def test_process_killed_with_sigkill_resumes_to_the_digest_of_an_uninterrupted_run(ingested, tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    reference = _copy(ingested, tmp_path / "ref.zarr")
    done = radflow.process(reference, steps=STEPS, canvas=512, settings=SETTINGS)
    ranges = done["steps"]["preprocess"]["ranges"]
    assert ranges >= 10 and done["steps"]["features"]["ranges"] == ranges

    store = _copy(ingested, tmp_path / "killed.zarr")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RADFLOW_INFER_BATCH": "2",
           "RADFLOW_SHARD_TARGET_MIB": "1", "RADFLOW_CLUSTER__N_WORKERS": "2"}
    cmd = [sys.executable, "-m", "radflow", "process", store, "--steps", ",".join(STEPS), "--canvas", "512"]
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while _stage_parts(store) < ranges // 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the flow process and its local cluster, mid-stage
        proc.wait()
    at_kill = _stage_parts(store)
    assert 0 < at_kill < 2 * ranges, (at_kill, (tmp_path / "first.log").read_text()[-2000:])
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert radflow.digest(store) == radflow.digest(reference)
    again = radflow.process(store, steps=STEPS, settings=SETTINGS)
    assert all(s["frames"] == 0 and s["ranges"] == 0 for s in again["steps"].values())
    print(f"\nkilled with {at_kill} of {2 * ranges} ranges recorded; the resumed store equals the uninterrupted one")


class ToyMean(Stage):
    """A stage defined outside radflow: the mean of each frame's canvas into table ``toy``."""

    name = "toy-mean"
    order = 90
    reads = ("images", "instances")
    writes = ("toy",)

    def prepare(self, request: Request) -> Job | None:
        return Job(self, request.store.url, request.store.storage_options, self.name, fingerprint(1), after="preprocess")

    def plan(self, job: Job, request: Request) -> list[Range]:
        return image_ranges(request)

    def run(self, job: Job, rng: Range) -> int:
        rows = instance_rows(job, rng, ["index", "sop_uid"])
        x = images_block(job, rng)
        rows["mean"] = x[rows["index"].to_numpy() - rng.lo].mean(axis=(1, 2))
        rows["worker_pid"] = os.getpid()
        write_part(job.store, "toy", rng.part, rows, storage_options=job.storage_options)
        return len(rows)


def test_a_new_stage_runs_from_the_registry_and_workers_own_their_rows(ingested, tmp_path, monkeypatch):
    import radflow.store.tables as tables

    store = _copy(ingested, tmp_path / "toy.zarr")
    register(ToyMean)
    try:
        assert list(registered())[-1] == "toy-mean"
        flow_reads: list[tuple[str, tuple[str, ...] | None]] = []
        read_arrow = tables.read_arrow

        def guarded(store_url, name, *args, **kwargs):  # a limit on what the flow process may read
            columns = kwargs.get("columns")
            flow_reads.append((name, tuple(columns) if columns else None))
            if name in ("instances", "headers", "luts", "predictions", "features", "toy") and columns != ["index"]:
                raise AssertionError(f"the flow process read per-frame rows of {name} ({columns})")
            return read_arrow(store_url, name, *args, **kwargs)

        monkeypatch.setattr(tables, "read_arrow", guarded)
        out = radflow.process(store, steps=["preprocess", "features", "toy-mean"], canvas=256, settings=SETTINGS)
        monkeypatch.undo()
        assert ("instances", ("index",)) in flow_reads
        st = radflow.open_store(store)
        inst = st.instances()
        toy = st.table("toy").sort_values("index").reset_index(drop=True)
        assert out["steps"]["toy-mean"]["frames"] == len(inst) == len(toy)
        assert list(toy["sop_uid"]) == list(inst["sop_uid"])
        assert os.getpid() not in set(toy["worker_pid"])  # written by the workers, not the flow process
        images = np.asarray(st.images[:], dtype=np.float32)
        np.testing.assert_allclose(toy["mean"], images[toy["index"]].mean(axis=(1, 2)), rtol=1e-5)
        # re-preprocessing (a changed recipe) re-runs what derives from it, the new stage included
        again = radflow.process(store, steps=["preprocess", "toy-mean"], settings={**SETTINGS, "enhance": "equalize"})
        assert again["steps"]["toy-mean"]["frames"] == len(inst)
        assert radflow.process(store, steps=["toy-mean"], settings=SETTINGS)["steps"]["toy-mean"]["ranges"] == 0
    finally:
        from radflow.stages import base

        base._REGISTRY.pop("toy-mean", None)


def test_completion_is_recorded_per_range_in_a_table(ingested, tmp_path):
    store = _copy(ingested, tmp_path / "rec.zarr")
    radflow.process(store, steps=["preprocess"], canvas=256, settings=SETTINGS)
    stages = radflow.open_store(store).table("stages")
    assert set(stages["scope"]) == {"preprocess"} and stages["part"].is_unique
    inst = radflow.open_store(store).instances()
    assert stages["frames"].sum() == len(inst)
    assert "stages" not in dict(radflow.open_store(store).images.attrs)
    assert isinstance(stages, pd.DataFrame) and (stages["hi"] > stages["lo"]).all()
