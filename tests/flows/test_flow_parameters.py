"""radflow's flows record their parameters as Prefect's own encoder does, without importing FastAPI."""

from __future__ import annotations

import enum
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from prefect.flows import Flow

from radflow.flows._flow import RadflowFlow, plain_json

PLAIN = {
    "store": "/data/s.zarr", "steps": ("preprocess", "features"), "model": None, "canvas": 512, "embeddings": False,
    "settings": {"cluster": {"n_workers": 2, "threads_per_worker": 1}, "spectral_cutoff": 0.25, "tags": ["a", "b"]},
    "storage_options": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}, "nan": float("nan"),
}


class Color(str, enum.Enum):
    RED = "red"


def _both(params):
    def fn(**kwargs):
        return None

    ours = RadflowFlow(fn=fn, name="ours").serialize_parameters(params)
    prefects = Flow(fn=fn, name="prefect").serialize_parameters(params)
    return ours, prefects


def test_plain_parameters_are_recorded_as_prefects_encoder_records_them():
    ours, prefects = _both(PLAIN)
    nan = ours.pop("nan"), prefects.pop("nan")
    assert ours == prefects and ours["steps"] == ["preprocess", "features"]
    assert all(np.isnan(v) for v in nan)


@pytest.mark.parametrize("value", [pathlib.Path("/data/x"), np.float64(0.5), Color.RED, {1: "a"}, ({"p": pathlib.Path("/y")},)])
def test_other_values_go_to_prefects_encoder(value):
    with pytest.raises(TypeError):
        plain_json(value)
    ours, prefects = _both({"value": value, "store": "s"})
    assert ours == prefects


def test_a_flow_run_records_its_parameters_without_importing_fastapi(prefect_api, tmp_path):
    """In a fresh process (FastAPI not imported by anything before): a radflow flow runs, its parameters
    are recorded as given, and FastAPI is still not imported."""
    from prefect.settings import PREFECT_API_URL

    code = """
import sys
from radflow.flows._flow import flow

@flow(name="radflow-parameters-check", validate_parameters=False)
def check(store, steps=("a", "b"), settings=None):
    from prefect.runtime import flow_run
    return str(flow_run.id)

run_id = check("s.zarr", settings={"canvas": 256, "nested": {"x": [1, 2.5, None]}})
print(run_id)
print("fastapi" in sys.modules)
"""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id, imported = out.stdout.split()[-2:]
    assert imported == "False"

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.parameters == {"store": "s.zarr", "steps": ["a", "b"],
                              "settings": {"canvas": 256, "nested": {"x": [1, 2.5, None]}}}
