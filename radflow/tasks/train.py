"""Brief supervised training of a torchvision classifier on in-memory images (CPU or GPU)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from radflow.tasks.infer import ModelCard, to_model_input

__all__ = ["build_model", "train_classifier"]

log = logging.getLogger(__name__)


def build_model(card: ModelCard):
    """A torchvision architecture named by ``card.arch`` with ``len(card.labels)`` outputs (random init)."""
    import torchvision
    from radflow.errors import ModelError

    try:
        ctor = torchvision.models.get_model_builder(card.arch)
    except ValueError:
        raise ModelError(f"unknown torchvision architecture {card.arch!r}; see torchvision.models.list_models()") from None
    if not card.labels:
        raise ModelError("a model card for training or a state_dict needs 'labels' (one per output)")
    return ctor(weights=None, num_classes=len(card.labels))


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    card: ModelCard,
    *,
    epochs: int = 16,
    batch_size: int = 16,
    lr: float = 3e-4,
    seed: int = 0,
) -> Any:
    """Train ``card.arch`` from scratch on ``images`` with binary ``labels``.

    Parameters
    ----------
    images : (n, H, W) float32 NumPy in [0, 1]
    labels : (n, len(card.labels)) or (n,) {0, 1}
    seed : the same seed, data and thread count give the same weights (a fixed number of epochs,
        deterministic kernels; no wall-time budget, whose epoch count would depend on the machine)
    lr : AdamW learning rate at the start of a cosine schedule over ``epochs``

    Returns
    -------
    torch.nn.Module in eval mode, on the CPU.
    """
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(images, labels, card, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(images: np.ndarray, labels: np.ndarray, card: ModelCard, *, epochs: int, batch_size: int, lr: float,
           seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(card)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32).reshape(len(labels), -1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x_all = to_model_input(images, card)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        total = 0.0
        for start in range(0, len(order), batch_size):
            sel = torch.as_tensor(order[start : start + batch_size])
            xb = x_all[sel]
            if rng.random() < 0.5:
                xb = torch.flip(xb, dims=[3])
            opt.zero_grad()
            loss = loss_fn(model(xb), y[sel])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        sched.step()
        log.info("epoch %d of %d: loss %.4f", epoch + 1, epochs, total / len(order))
    return model.eval()
