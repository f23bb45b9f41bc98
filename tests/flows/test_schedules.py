"""Schedules: `radflow serve --cron` serves a scheduled incremental ingestion against Prefect's
local API; two runs of its deployment, the second after files were added, ingest only the new
files. `prefect.yaml` deploys both flows with their cron schedules."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import radflow
from radflow.synth import write_archive

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "RADFLOW_CLUSTER__N_WORKERS": "1"}


def _deployment(name: str, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not registered yet
                time.sleep(1)
    raise TimeoutError(f"deployment {name} did not appear")


def _run(name: str):
    from prefect.deployments import run_deployment

    run = run_deployment(name, timeout=300, poll_interval=1)
    assert run.state.is_completed(), run.state
    return run


def test_serve_cron_runs_ingest_only_new_files(tmp_path, prefect_api):
    a = write_archive(tmp_path / "a", 4, seed=41, sizes=((512, 512),), broken=False)
    store = str(tmp_path / "sched.zarr")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "radflow", "--verbose", "serve", a.dicom, store, "--cron", "0 3 * * *",
                             "--name", "nightly", "--timezone", "Europe/Berlin"], env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        dep = _deployment("radflow-ingest/nightly")
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"] and dep.parameters["store"] == store
        assert [s.schedule.timezone for s in dep.schedules] == ["Europe/Berlin"]  # 03:00 in Berlin, not UTC
        _run("radflow-ingest/nightly")
        first = radflow.open_store(store).ledger()
        objects_before = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                          for d, _, fs in os.walk(os.path.join(store, "raw")) for f in fs}
        b = write_archive(tmp_path / "b", 3, seed=42, sizes=((600, 480),), broken=False)
        os.rename(b.dicom, os.path.join(a.dicom, "added"))
        second_run = _run("radflow-ingest/nightly")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    second = radflow.open_store(store).ledger()
    assert len(first) == 4 and (first["status"] == "ok").all()
    new = second[~second["source"].isin(first["source"])]
    assert len(new) == 3 and new["source"].str.contains("/added/").all() and (new["status"] == "ok").all()
    assert set(second.merge(first, on=["source", "batch"])["source"]) == set(first["source"])  # old rows untouched
    after = {p: os.stat(p).st_mtime_ns for p in objects_before}
    assert after == objects_before  # the first run's shards were not rewritten
    import httpx
    from prefect.settings import PREFECT_API_URL

    arts = httpx.post(PREFECT_API_URL.value() + "/artifacts/filter",
                      json={"limit": 200, "offset": 0, "sort": "CREATED_DESC"}).json()
    mine = [x for x in arts if x["key"] == "radflow-ingest" and x["flow_run_id"] == str(second_run.id)]
    assert mine, [(x["key"], x["flow_run_id"], second_run.id) for x in arts]
    header, _, values = mine[0]["data"].split("## Rejected")[0].strip().splitlines()[-3:]
    row = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in values.strip("|").split("|")]))
    assert (row["discovered"], row["new"], row["ok"]) == ("7", "3", "3"), mine[0]["data"]


def test_prefect_yaml_deploys_both_flows(tmp_path, prefect_api):
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = yaml.safe_load(open(os.path.join(root, "prefect.yaml")))
    assert {d["name"] for d in spec["deployments"]} == {"ingest-nightly", "process-nightly"}
    env = {**_env(), "RADFLOW_SOURCE": str(tmp_path / "src"), "RADFLOW_STORE": str(tmp_path / "s.zarr")}
    subprocess.run(["prefect", "work-pool", "create", "radflow", "--type", "process"], env=env, cwd=root, check=True,
                   capture_output=True)
    out = subprocess.run(["prefect", "--no-prompt", "deploy", "--all"], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ingest = _deployment("radflow-ingest/ingest-nightly", 10)
    process = _deployment("radflow-process/process-nightly", 10)
    assert [s.schedule.cron for s in ingest.schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in process.schedules] == ["0 5 * * *"]
    assert ingest.parameters == {"source": str(tmp_path / "src"), "store": str(tmp_path / "s.zarr")}
    assert ingest.work_pool_name == "radflow"


def test_a_wrong_time_zone_name_fails_before_serving():
    from radflow.errors import ConfigError
    from radflow.flows.schedule import schedule

    assert schedule("0 3 * * *", "America/New_York").timezone == "America/New_York"
    with pytest.raises(ConfigError, match="IANA"):
        schedule("0 3 * * *", "Mars/Olympus")
