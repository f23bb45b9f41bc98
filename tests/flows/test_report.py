"""The QC report: written by `process --report`, self-contained, and it draws in a real browser
(headless Chromium): every thumbnail decodes, every plot has marks, the ROC curves are there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import radflow

pytestmark = pytest.mark.slow

_CHECK = """<pre id="qc-check"></pre><script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img.qc-thumb')];
  const plots = [...document.querySelectorAll('svg.plot')];
  const bars = [...document.querySelectorAll('rect.bar')].filter(r => r.getBBox().height > 0 && r.getBBox().width > 0);
  const rocs = [...document.querySelectorAll('polyline.roc')].filter(p => p.getTotalLength() > 10);
  document.getElementById('qc-check').textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 50).length,
    plots: plots.length,
    drawn_plots: plots.filter(s => s.getBoundingClientRect().width > 100).length,
    bars: bars.length, rocs: rocs.length});
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is needed for the report test (.ci/run installs Debian's chromium)")
    pytest.skip("no Chromium here (apt-get install chromium); CI installs it")


def _model(path: str, seed: int = 0) -> str:
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1))
    torch.jit.script(net).save(path)
    with open(path + ".card.json", "w") as fh:
        json.dump({"labels": ["lesion"], "activation": "sigmoid", "name": os.path.basename(path)[:-3]}, fh)
    return path


def test_qc_report_renders_in_chromium(tmp_path, small_archive, prefect_api, dask_client):
    browser = _chromium()
    store = str(tmp_path / "qc.zarr")
    radflow.ingest(small_archive.dicom, store)
    out = radflow.process(store, steps=["preprocess", "infer", "features"], canvas=128, model=_model(str(tmp_path / "m.pt")),
                          report=True, labels=small_archive.labels)
    path = out["report"]
    assert path.startswith(store + "/reports/qc-") and os.path.exists(path)
    text = open(path).read()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained, static
    for section in ("Inputs", "Sampled frames by modality and view", "Intensity", "Predictions", "ROC"):
        assert section in text
    assert "NOT_DICOM" in text or "TRUNCATED" in text  # the archive's broken files, by reason
    n_thumbs = len(re.findall(r"<img class='qc-thumb'", text))
    assert n_thumbs >= 6

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--virtual-time-budget=5000", "--hide-scrollbars"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="qc-check">(\{.*?\})</pre>', dom.stdout)
    assert m, dom.stderr[-2000:]
    check = json.loads(m.group(1).replace("&quot;", '"'))
    print(f"\nQC report in Chromium: {check}")
    assert check["images"] == check["decoded"] == n_thumbs, check
    assert check["plots"] == check["drawn_plots"] >= 3 and check["bars"] > 20 and check["rocs"] == 1, check

    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1400,2200", f"--screenshot={shot}", f"file://{path}"],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert px.shape[1] == 1400 and (px < 128).mean() > 0.05  # dark thumbnails and marks cover the page, not a blank
    keep = os.environ.get("RADFLOW_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_a_report_shows_one_model_named_by_its_weights(tmp_path, small_archive, prefect_api, dask_client):
    from radflow.errors import ConfigError
    from radflow.flows.report import write_report

    store = str(tmp_path / "two.zarr")
    radflow.ingest(small_archive.dicom, store)
    radflow.process(store, steps=["preprocess", "infer"], canvas=64, model=_model(str(tmp_path / "a.pt")))
    second = radflow.process(store, steps=["infer"], canvas=64, model=_model(str(tmp_path / "b.pt"), seed=1),
                             report=True, labels=small_archive.labels)
    preds = radflow.open_store(store).predictions()
    models = preds.groupby("model_sha256").size()
    assert len(models) == 2 and models.nunique() == 1  # both models scored every frame
    first_sha, second_sha = (preds.drop_duplicates("model_sha256").set_index("model")["model_sha256"][m]
                             for m in ("a", "b"))
    text = open(second["report"]).read()  # process --report shows the model it just ran, and only that one
    assert second_sha in text and first_sha not in text
    assert f"{models[second_sha]} frames" in text
    with pytest.raises(ConfigError, match="2 models"):  # no pooled report when the model is not named
        write_report(store)
    named = open(write_report(store, model=first_sha[:12])).read()
    assert first_sha in named and second_sha not in named
    with pytest.raises(ConfigError, match="none of the models"):
        write_report(store, model="no-such-model")
