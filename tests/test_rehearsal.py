"""The archive-scale rehearsal runs in CI at a small size (``--inputs 500``): the MIMIC-CXR layout, an
end-to-end run, a 1 % increment, verify and compaction, on a scheduler and workers of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rehearsal_at_500_inputs(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "rehearsal.json"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "rehearsal.py"), "--inputs", "500",
                          "--increments", "1", "--no-full-size", "--out", str(tmp_path / "work"), "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "== rehearsal ==" in run.stdout and "cost growth" in run.stdout
    result = json.loads(out.read_text())
    fig = result["figures"]["500"]
    assert fig["lost"] == 0 and fig["not_ok"] == 0 and fig["verify_ok"] and fig["verified"] == 505
    assert fig["read_after_compaction"]["rows"] == 505 + 3 * 1  # the increment's studies and one night's
    stages = {r["stage"]: r for r in result["rows"] if r["size"] == "500"}
    assert {"ingest", "preprocess", "infer", "features"} <= set(stages)
    assert stages["infer"]["inputs"] == 500
    increment = {r["stage"]: r for r in result["rows"] if r["size"] == "500+1%"}
    assert increment["ingest"]["inputs"] == 5 and increment["preprocess"]["inputs"] < 500  # only new ranges
