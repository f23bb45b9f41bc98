import numpy as np
import pytest
import torch

from radflow.errors import ModelError
from radflow.storage.models import ModelSpec, load_model, save_model
from radflow.tasks.infer import ModelCard, predict, to_model_input
from radflow.tasks.metrics import calibration_table, roc_auc, sensitivity_specificity
from radflow.tasks.train import build_model

CARD = ModelCard(name="t", arch="resnet18", labels=("a", "b"), activation="sigmoid", input_size=64, channels=3,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_predict_equals_direct_forward_for_state_dict_and_torchscript(tmp_path):
    torch.manual_seed(0)
    model = build_model(CARD).eval()
    x = np.random.default_rng(0).random((5, 96, 96)).astype(np.float32)
    with torch.inference_mode():
        direct = torch.sigmoid(model(to_model_input(x, CARD))).numpy()
    sd = tmp_path / "m.pt"
    sha = save_model(model, CARD, str(sd))
    loaded = load_model(ModelSpec(str(sd)))
    assert loaded.kind == "state_dict" and loaded.sha256 == sha and loaded.card.labels == ("a", "b")
    np.testing.assert_allclose(predict(loaded.module, x, loaded.card), direct, atol=1e-5)
    ts = tmp_path / "m.ts"
    save_model(model, CARD, str(ts), torchscript=True)
    loaded_ts = load_model(ModelSpec(str(ts)))
    assert loaded_ts.kind == "torchscript"
    np.testing.assert_allclose(predict(loaded_ts.module, torch.from_numpy(x), loaded_ts.card), direct, atol=1e-5)


def test_to_model_input_shapes_and_normalization():
    x = np.full((2, 32, 32), 0.75, np.float32)
    t = to_model_input(x, CARD)
    assert t.shape == (2, 3, 64, 64) and t.dtype == torch.float32
    assert torch.allclose(t, torch.full_like(t, 1.0))


def test_state_dict_mismatch_names_first_key(tmp_path):
    model = build_model(ModelCard(arch="resnet18", labels=("a",)))
    path = tmp_path / "wrong.pt"
    save_model(model, ModelCard(arch="resnet18", labels=("a",)), str(path))
    with pytest.raises(ModelError, match="fc.weight"):
        load_model(ModelSpec(str(path), card={"labels": ["a", "b", "c"]}))
    with pytest.raises(ModelError, match="architecture"):
        load_model(ModelSpec(str(path), card={"arch": ""}))
    with pytest.raises(ModelError, match="not found"):
        load_model(ModelSpec(str(tmp_path / "missing.pt")))


def test_metrics():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert sensitivity_specificity([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2], 0.5) == (0.5, 0.5)
    table = calibration_table(np.array([0, 1, 1]), np.array([0.05, 0.95, 0.92]), bins=10)
    assert table[0]["n"] == 1 and table[9]["n"] == 2 and table[9]["observed"] == 1.0
