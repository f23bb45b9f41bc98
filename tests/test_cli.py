"""The `radflow` command as a user runs it: real subprocesses, real servers on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def run(*args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra_env}
    env.pop("PREFECT_API_URL", None)  # the command starts its own local API
    return subprocess.run([sys.executable, "-m", "radflow", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def test_help_and_info():
    out = run("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "ingest" in out.stdout
    info = run("info")
    assert info.returncode == 0
    assert "JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90): " in info.stdout
    assert re.search(r"^GPUs: ", info.stdout, re.M)


def test_missing_store_fails_with_one_line_reason(tmp_path):
    out = run("inspect", str(tmp_path / "nope.zarr"))
    assert out.returncode == 1
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "StoreNotFoundError" in lines[0] and "radflow ingest" in lines[0]


def test_bad_setting_fails_with_one_line_naming_the_variable(tmp_path):
    out = run("process", str(tmp_path / "nope.zarr"), "--steps", "features", RADFLOW_CANVAS="abc")
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "invalid setting RADFLOW_CANVAS='abc'" in lines[0]


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    out = run("demo", "--out", str(tmp_path / "demo"), "--n", "20", "--epochs", "2", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "radflow demo — summary" in text
    assert re.search(r"inputs\s+\d+ discovered, 20 ok, rejected: NON_IMAGE 1, NOT_DICOM 1, TRUNCATED 1", text)
    auc = re.search(r"held-out\s+AUC ([0-9.]+).* for .lesion. on (\d+) images", text)
    # 20 images leave few held-out ones: the demo says so when they hold one class only, instead of an AUC of nan
    skipped = re.search(r"held-out\s+not evaluated: .*column 'lesion' holds only class", text)
    assert (auc and 0.0 <= float(auc.group(1)) <= 1.0) or skipped, text
    assert "Dask dashboard:" in out.stderr
    store = tmp_path / "demo" / "store.zarr"
    for table in ("ledger", "instances", "features", "predictions") + (("evaluation",) if auc else ()):
        assert any((store / "tables" / table).iterdir())
    ins = run("inspect", str(store))
    assert ins.returncode == 0 and "images" in ins.stdout and "ledger 23 rows" in ins.stdout
    assert re.search(r"images\s+20 of \d+ filled", ins.stdout), ins.stdout  # capacity grows by shards
    assert re.search(r"raw/\S+\s+\d+ of \d+ filled", ins.stdout), ins.stdout
    ver = run("verify", str(store))
    assert ver.returncode == 0 and "checked 20 frames" in ver.stdout and "no chunk is missing" in ver.stdout

    # a second demo in the same place: its own folder, an honest summary, its own report, the same weights
    again = run("demo", "--out", str(tmp_path / "demo"), "--n", "20", "--epochs", "2", timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"this one writes to {tmp_path / 'demo'}.2" in " ".join((again.stdout + again.stderr).split())  # wrapped
    assert re.search(r"inputs\s+23 discovered, 20 ok, rejected: NON_IMAGE 1, NOT_DICOM 1, TRUNCATED 1", again.stdout)
    assert "DUPLICATE" not in again.stdout
    reports = [re.search(r"QC report\s+(\S+)", o).group(1) for o in (text, again.stdout)]
    assert reports[0].startswith(str(store) + "/") and reports[1].startswith(f"{tmp_path / 'demo'}.2/store.zarr/")
    weights = [re.search(r"weights SHA-256 ([0-9a-f]{12})", o).group(1) for o in (text, again.stdout)]
    assert weights[0] == weights[1]  # the same seed trains the same model
    assert len(radflow_store(store).ledger()) == 23  # the first store is untouched


def radflow_store(path):
    import radflow

    return radflow.open_store(str(path))


def test_a_second_demo_writes_beside_the_first(tmp_path, prefect_api):
    from radflow.flows.demo import fresh_folder

    out = tmp_path / "demo"
    assert fresh_folder(str(out)) == str(out)
    (out / "store.zarr").mkdir(parents=True)
    assert fresh_folder(str(out)) == f"{out}.2"
    (tmp_path / "demo.2").mkdir()
    assert fresh_folder(str(out)) == f"{out}.3"


@pytest.mark.slow
def test_performance_report_saved_beside_the_tables(tmp_path, prefect_api, dask_client):
    import radflow
    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=2, sizes=((512, 512),), broken=False)
    store = str(tmp_path / "r.zarr")
    s = radflow.ingest(a.dicom, store, settings={"performance_report": True})
    p = radflow.process(store, steps=["preprocess"], canvas=64, settings={"performance_report": True})
    for url in (s["performance_report"], p["performance_report"]):
        assert url.startswith(store + "/reports/") and url.endswith(".html")
        html = open(url).read()
        assert "Dask Performance Report" in html and "Task Stream" in html and len(html) > 10_000


def test_configuration_reference_is_generated_from_the_settings_model():
    from radflow.config import Settings, reference_markdown

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    committed = open(os.path.join(root, "docs", "configuration.md")).read()
    assert committed == reference_markdown(), "docs/configuration.md is stale: run `radflow config > docs/configuration.md`"
    for name in Settings.model_fields:
        assert f"`RADFLOW_{name.upper()}" in committed
    assert "`RADFLOW_PRIVACY__HASH_SOURCES`" in committed and "`RADFLOW_CLUSTER__KUBERNETES__IMAGE`" in committed


def test_storage_options_come_from_the_settings_and_the_endpoint_flag_overrides(monkeypatch):
    import argparse

    from radflow.cli import _storage_options

    monkeypatch.setenv("RADFLOW_STORAGE_OPTIONS", '{"endpoint_url": "http://127.0.0.1:9", "anon": true}')
    assert _storage_options(argparse.Namespace()) == {"endpoint_url": "http://127.0.0.1:9", "anon": True}
    got = _storage_options(argparse.Namespace(endpoint_url="http://127.0.0.1:10"))
    assert got == {"endpoint_url": "http://127.0.0.1:10", "anon": True}
    monkeypatch.delenv("RADFLOW_STORAGE_OPTIONS")
    assert _storage_options(argparse.Namespace()) is None


@pytest.mark.slow
def test_run_logs_reach_the_prefect_api_while_the_terminal_stays_quiet(tmp_path, prefect_api):
    import httpx
    from prefect.settings import PREFECT_API_URL

    from radflow.synth import write_archive

    a = write_archive(tmp_path / "a", 3, seed=5, sizes=((256, 256),), broken=False)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RADFLOW_CLUSTER__N_WORKERS": "1"}
    out = subprocess.run([sys.executable, "-m", "radflow", "ingest", a.dicom, str(tmp_path / "s.zarr")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert " | INFO " not in out.stderr and "ingested" not in out.stderr  # the terminal: progress and the summary
    logs = httpx.post(PREFECT_API_URL.value() + "/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}).json()
    messages = [x["message"] for x in logs]
    assert any(m.startswith("ingested 3 of 3 new inputs") for m in messages), messages[:20]
