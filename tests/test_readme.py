"""The README's Python API snippet, pasted into a script as it stands, runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _api_snippet() -> str:
    text = open(README).read()
    section = text[text.index("## The Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_snippet_runs_as_a_script(tmp_path, prefect_api):
    import torch
    import torchvision
    from prefect.settings import PREFECT_API_URL

    from radflow.synth import write_archive

    code = _api_snippet()
    assert 'if __name__ == "__main__":' in code
    write_archive(tmp_path / "archive", 6, seed=2, sizes=((128, 128),), broken=False)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), tmp_path / "model.pt")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    import radflow

    preds = radflow.open_store(str(tmp_path / "store.zarr")).predictions()
    assert len(preds) == 6 and {"p_0", "p_1"} <= set(preds.columns)  # a state_dict without a card: p_0, p_1
    assert _runs("radflow-ingest", "archive/dicom") == 1  # the worker processes started no runs of their own
    assert _runs("radflow-process", None) == 1


def _runs(flow: str, source: str | None) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])), limit=200)
    return sum(r.parameters.get("store") == "store.zarr" and (source is None or r.parameters.get("source") == source)
               for r in runs)
