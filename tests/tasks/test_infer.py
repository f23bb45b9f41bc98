import sys
import textwrap

import numpy as np
import pytest
import torch

from radflow.errors import ModelError
from radflow.models.loading import ModelSpec, load_model, loaders, save_model
from radflow.tasks.infer import ModelCard, predict, to_model_input
from radflow.tasks.metrics import calibration_table, roc_auc, sensitivity_specificity
from radflow.tasks.train import build_model

CARD = ModelCard(name="t", arch="resnet18", labels=("a", "b"), activation="sigmoid", input_size=64, channels=3,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), embedding_layer="fc")
X = np.random.default_rng(0).random((5, 96, 96)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CARD).eval()


@pytest.fixture(scope="module")
def direct(model):
    with torch.inference_mode():
        return torch.sigmoid(model(to_model_input(X, CARD))).numpy()


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript", "onnx"])
def test_predictions_equal_direct_forward(tmp_path, model, direct, fmt):
    path = tmp_path / f"m.{ {'state_dict': 'pt', 'torchscript': 'ts', 'onnx': 'onnx'}[fmt] }"
    sha = save_model(model, CARD, str(path), format=fmt, example=to_model_input(X[:2], CARD))
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.kind == fmt and loaded.sha256 == sha and loaded.card.labels == ("a", "b")
    np.testing.assert_allclose(predict(loaded.module, X, loaded.card), direct, atol=1e-4)
    np.testing.assert_allclose(predict(loaded.module, torch.from_numpy(X), loaded.card, micro_batch=2), direct, atol=1e-4)


def test_yaml_card_and_no_card_defaults(tmp_path, model):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "m.pt.card.yaml").write_text("arch: resnet18\nlabels: [a, b]\nactivation: softmax\ninput_size: 64\nchannels: 3\n")
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.card.activation == "softmax" and loaded.card.input_size == 64
    np.testing.assert_allclose(predict(loaded.module, X, loaded.card).sum(axis=1), 1.0, rtol=1e-5)
    # no card: the model sees `images` as stored, float32 (batch, 1, H, W), no activation change but sigmoid default
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean(dim=(1, 2, 3), keepdim=False)[:, None]

    out = predict(Probe(), X, ModelCard())
    assert seen["x"].shape == (5, 1, 96, 96) and seen["x"].dtype == torch.float32
    np.testing.assert_allclose(seen["x"][:, 0].numpy(), X)
    np.testing.assert_allclose(out[:, 0], 1 / (1 + np.exp(-X.mean(axis=(1, 2)))), rtol=1e-5)


def test_embeddings_are_the_penultimate_features(model):
    pred = predict(model, X, CARD, embeddings=True)
    x = to_model_input(X, CARD)
    with torch.inference_mode():
        feats = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1).numpy()
    assert pred.embeddings.shape == (5, 512)
    np.testing.assert_allclose(pred.embeddings, feats, atol=1e-5)


def test_out_of_memory_halves_the_micro_batch():
    calls = []

    class Picky(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x.flatten(1).sum(1, keepdim=True)

    out = predict(Picky(), X, ModelCard(activation="none"), micro_batch=8)
    np.testing.assert_allclose(out[:, 0], X.reshape(5, -1).sum(1), rtol=1e-5)
    assert calls == [5, 4, 2, 2, 1]  # 5 and 4 run out of memory; halved to 2 for the rest


def test_entry_point_loader_is_found(tmp_path, monkeypatch):
    """A site's loader, registered as a real entry point of an installed distribution."""
    dist = tmp_path / "site_loader-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-loader\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[radflow.model_loaders]\nnpyscale = site_loader_mod:load\n")
    (tmp_path / "site_loader_mod.py").write_text(textwrap.dedent('''
        import io, numpy as np, torch
        class Scale(torch.nn.Module):
            def __init__(self, w):
                super().__init__()
                self.w = float(w)
            def forward(self, x):
                return self.w * x.flatten(1).mean(1, keepdim=True)
        def load(data, card):
            return Scale(np.load(io.BytesIO(data))[0])
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    loaders.cache_clear()
    try:
        assert "npyscale" in loaders()
        weights = tmp_path / "w.npyscale"
        np.save(open(weights, "wb"), np.array([3.0]))
        loaded = load_model(ModelSpec(str(weights), card={"activation": "none"}))
        assert loaded.kind == "npyscale"
        np.testing.assert_allclose(predict(loaded.module, X, loaded.card)[:, 0], 3 * X.mean(axis=(1, 2)), rtol=1e-5)
    finally:
        loaders.cache_clear()
        sys.modules.pop("site_loader_mod", None)


def test_to_model_input_shapes_and_normalization():
    x = np.full((2, 32, 32), 0.75, np.float32)
    t = to_model_input(x, CARD)
    assert t.shape == (2, 3, 64, 64) and t.dtype == torch.float32
    assert torch.allclose(t, torch.full_like(t, 1.0))


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_float16_block_makes_the_input_its_float32_conversion_makes(monkeypatch, channels_last):
    """A stored float16 block is converted and resized a few frames at a time (never whole in float32):
    the same values, bit for bit, as converting it first, for slices of one frame up to the whole block."""
    import radflow.tasks.infer as infer

    card = ModelCard(labels=("a",), input_size=24, channels=3, channels_last=channels_last)
    block = np.random.default_rng(7).random((7, 80, 64), dtype=np.float32).astype(np.float16)
    want = to_model_input(block.astype(np.float32), card)
    resized = []
    real_resize = infer.resize
    monkeypatch.setattr(infer, "resize", lambda x, *a, **k: resized.append(x.shape[0]) or real_resize(x, *a, **k))
    for frames in (1, 3, 7, 100):
        monkeypatch.setattr(infer, "_SLICE_BYTES", frames * 4 * 80 * 64)
        resized.clear()
        got = to_model_input(block, card)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert max(resized) == min(frames, 7) and sum(resized) == 7  # never more than a slice in float32 at once
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_state_dict_mismatch_names_first_key(tmp_path):
    card = ModelCard(arch="resnet18", labels=("a",))
    path = tmp_path / "wrong.pt"
    save_model(build_model(card), card, str(path))
    with pytest.raises(ModelError, match="fc.weight"):
        load_model(ModelSpec(str(path), card={"labels": ["a", "b", "c"]}))
    with pytest.raises(ModelError, match="architecture"):
        load_model(ModelSpec(str(path), card={"arch": ""}))
    with pytest.raises(ModelError, match="not found"):
        load_model(ModelSpec(str(tmp_path / "missing.pt")))
    with pytest.raises(ModelError, match="no loader"):
        load_model(ModelSpec(str(path), card={"format": "tensorflow"}))


def test_metrics():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert sensitivity_specificity([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2], 0.5) == (0.5, 0.5)
    table = calibration_table(np.array([0, 1, 1]), np.array([0.05, 0.95, 0.92]), bins=10)
    assert table[0]["n"] == 1 and table[9]["n"] == 2 and table[9]["observed"] == 1.0


def test_a_state_dict_without_a_card_names_its_outputs_by_position(tmp_path):
    import torch
    import torchvision

    from radflow.models.loading import ModelSpec, load_model

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    path = str(tmp_path / "weights.pt")
    torch.save(net.state_dict(), path)  # no card beside it
    loaded = load_model(ModelSpec(path, arch="resnet18"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x))
    assert loaded.module.fc.out_features == 3
    assert loaded.card.channels == 3  # from the first convolution: the grey canvas is repeated, as for any ImageNet model


def test_task_threads_of_a_worker_read_their_blocks_one_at_a_time(tmp_path, model, direct):
    """Two inference tasks of one worker: while one reads a block and makes it model input, the other
    waits (two blocks at full canvas size at once were the inference command's peak); their scores are
    those of the model run directly."""
    import threading
    import time

    from radflow.stages.infer import infer_blocks

    path = tmp_path / "m.pt"
    save_model(model, CARD, str(path))
    reading, most, lock = [0], [0], threading.Lock()

    def blocks():
        for lo in range(0, len(X), 2):
            with lock:
                reading[0] += 1
                most[0] = max(most[0], reading[0])
            time.sleep(0.05)  # a read long enough for the other thread to try its own
            with lock:
                reading[0] -= 1
            yield X[lo:lo + 2]

    out: list[np.ndarray] = [None, None]

    def task(i: int) -> None:
        out[i] = infer_blocks(blocks(), spec=ModelSpec(str(path)))

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert most[0] == 1
    for got in out:
        np.testing.assert_allclose(got, direct, atol=1e-4)
