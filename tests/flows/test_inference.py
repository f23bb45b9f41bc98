"""Inference stage with models a site brings: ONNX, state_dict + embeddings; evaluation against labels."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import radflow
from radflow.flows.evaluate import evaluate_flow
from radflow.models.loading import ModelSpec, load_model, save_model
from radflow.tasks.infer import ModelCard, predict, to_model_input
from radflow.tasks.train import build_model

pytestmark = pytest.mark.slow

CARD = ModelCard(name="site-model", arch="resnet18", labels=("lesion", "other"), input_size=64, channels=3,
                 mean=(0.5,) * 3, std=(0.25,) * 3, embedding_layer="fc")


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_archive, prefect_api, dask_client):
    url = str(tmp_path_factory.mktemp("inf") / "store.zarr")
    radflow.ingest(small_archive.dicom, url)
    radflow.process(url, steps=["preprocess"], canvas=64)
    return url


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(1)
    return build_model(CARD).eval()


def test_onnx_predictions_equal_direct_forward(store, module, tmp_path):
    path = str(tmp_path / "site.onnx")
    sha = save_model(module, CARD, path, format="onnx", example=torch.zeros(2, 3, 64, 64))
    radflow.process(store, steps=["infer"], model=path)
    st = radflow.open_store(store)
    preds = st.predictions()
    preds = preds[preds["model_sha256"] == sha].sort_values("index")
    ds = st.dataset()
    x = np.asarray(ds["images"].values, np.float32)
    with torch.inference_mode():
        direct = torch.sigmoid(module(to_model_input(x, CARD))).numpy()
    assert list(preds["index"]) == list(ds["index"].values)
    np.testing.assert_allclose(preds[["p_lesion", "p_other"]].to_numpy(), direct, atol=1e-4)


def test_state_dict_with_embeddings_and_evaluation(store, module, tmp_path, small_archive):
    path = str(tmp_path / "site.pt")
    sha = save_model(module, CARD, path)
    radflow.process(store, steps=["infer"], model=path, embeddings=True)
    st = radflow.open_store(store)
    preds = st.predictions()
    preds = preds[preds["model_sha256"] == sha].sort_values("index")
    (part,) = [p for p in st.parts("predictions") if sha[:12] in p]
    emb_type = pq.read_schema(part).field("embedding").type
    emb = np.stack(preds["embedding"].to_numpy())
    assert emb.shape == (len(preds), 512) and emb_type.list_size == 512 and str(emb_type.value_type) == "float"
    x = np.asarray(st.images.oindex[preds["index"].to_numpy()], np.float32)
    ref = predict(load_model(ModelSpec(path)).module, x, CARD, embeddings=True)
    np.testing.assert_allclose(emb, ref.embeddings, atol=1e-4)
    np.testing.assert_allclose(preds[["p_lesion", "p_other"]].to_numpy(), ref.scores, atol=1e-5)
    joined = preds.merge(st.instances(), on=["index", "sop_uid", "patient_key", "study_key"])
    assert len(joined) == len(preds)
    out = evaluate_flow(store, small_archive.labels, threshold=0.5)
    rows = [r for r in out["evaluation"] if r["model_sha256"] == sha]
    assert len(rows) == 1 and rows[0]["label"] == "lesion" and rows[0]["n"] == len(preds)
    assert 0.0 <= rows[0]["auc"] <= 1.0
    assert rows[0]["positives"] == int(__import__("pandas").read_csv(small_archive.labels)["lesion"].sum())
    calib = st.table("calibration")
    assert set(calib["label"]) == {"lesion"} and calib["n"].sum() >= len(preds)

    # bad labels are refused with the column and line named
    import pandas as pd

    from radflow.errors import ConfigError

    good = pd.read_csv(small_archive.labels)
    garbage = good.copy()
    garbage["lesion"] = garbage["lesion"].astype(object)
    garbage.loc[3, "lesion"] = "yes"
    one_class = good.assign(lesion=0)
    for name, table, message in (("garbage", garbage, "column 'lesion' must hold 0 or 1 (blank for unknown); line 5"),
                                 ("one-class", one_class, "holds only class [0]")):
        path = tmp_path / f"{name}.csv"
        table.to_csv(path, index=False)
        with pytest.raises(ConfigError, match=re.escape(message)):
            evaluate_flow(store, str(path))
    with pytest.raises(ConfigError, match="--split 'nosuch' matches no label row"):
        evaluate_flow(store, small_archive.labels, split="nosuch") if "split" in good else \
            evaluate_flow(store, _with_split(good, tmp_path), split="nosuch")
    for bad in (float("nan"), 5.0, 0.0):
        with pytest.raises(ConfigError, match="--threshold"):
            evaluate_flow(store, small_archive.labels, threshold=bad)


def _with_split(labels, tmp_path) -> str:
    path = tmp_path / "split.csv"
    labels.assign(split=["train" if i % 2 else "test" for i in range(len(labels))]).to_csv(path, index=False)
    return str(path)


class _Outputs(torch.nn.Module):
    """A model whose output layout is chosen by ``kind`` (scripted, so it loads as TorchScript)."""

    def __init__(self, kind: int) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        if self.kind == 0:  # a segmentation map (B, 1, H, W)
            return x[:, :1]
        if self.kind == 1:  # a 1-D vector (B,)
            return m
        if self.kind == 2:  # NaN everywhere
            return torch.full((x.shape[0], 2), float("nan"))
        # NaN where the image is brighter than average, else two scores
        scores = torch.stack([m, 1 - m], dim=1)
        return torch.where((m > m.mean())[:, None], torch.full_like(scores, float("nan")), scores)


def test_model_outputs_are_checked(store, tmp_path):
    """Outputs that break the (batch, labels) contract fail the step with a clear message; NaN scores
    are kept and flagged."""
    from radflow.errors import ModelError

    card = {"name": "contract", "labels": ["a", "b"], "input_size": 64, "channels": 3, "mean": [0.5] * 3,
            "std": [0.25] * 3, "activation": "none"}
    paths = {}
    for kind in range(4):
        paths[kind] = str(tmp_path / f"m{kind}.pt")
        torch.jit.script(_Outputs(kind)).save(paths[kind])
    for kind, message in ((0, r"returned shape \(2, 1, 64, 64\).*needs \(batch, outputs\)"),
                          (1, r"returned shape \(2,\)"), (2, "NaN or infinity for every output")):
        with pytest.raises(ModelError, match=message):
            radflow.process(store, steps=["infer"], model=paths[kind], card=card)
    before = {p for p in radflow.open_store(store).parts("predictions")}
    radflow.process(store, steps=["infer"], model=paths[3], card=card)
    preds = radflow.open_store(store).predictions()
    mine = preds[preds["model"] == "contract"]
    assert len(mine) > 0 and mine["nonfinite"].any() and not mine["nonfinite"].all()
    assert mine.loc[mine["nonfinite"], "p_a"].isna().all() and mine.loc[~mine["nonfinite"], "p_a"].notna().all()
    assert {p for p in radflow.open_store(store).parts("predictions")} > before
