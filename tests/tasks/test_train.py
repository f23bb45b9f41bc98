"""Training is reproducible: the same seed and data give the same weights."""

from __future__ import annotations

import numpy as np

from radflow.tasks.infer import ModelCard
from radflow.tasks.train import train_classifier


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    images = rng.random((12, 32, 32), dtype=np.float32)
    labels = (np.arange(12) % 2).astype(np.float32)
    card = ModelCard(name="t", arch="resnet18", labels=("lesion",), input_size=32, channels=3,
                     mean=(0.5,) * 3, std=(0.25,) * 3)
    model = train_classifier(images, labels, card, epochs=2, batch_size=4, seed=seed)
    return [p.detach().numpy().copy() for p in model.state_dict().values() if p.dtype.is_floating_point]


def test_the_same_seed_trains_the_same_weights():
    a, b, c = _weights(0), _weights(0), _weights(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))
