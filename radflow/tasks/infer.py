"""Batched model inference on a block of ``images`` (pure: tensor in, scores out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from radflow.tasks._xp import is_cupy_array, is_torch_array
from radflow.tasks.preprocess import resize

__all__ = ["ModelCard", "to_model_input", "predict"]


@dataclass(frozen=True)
class ModelCard:
    """How a model wants its input and what its outputs mean.

    ``input_size`` 0 means "as stored" (the ``images`` canvas); ``channels`` 3 repeats
    the grey image (ImageNet-style models); ``mean``/``std`` normalize per channel.
    """

    name: str = "model"
    arch: str = ""
    labels: tuple[str, ...] = ("score",)
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    input_size: int = 0
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("labels", "mean", "std"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def to_model_input(batch: Any, card: ModelCard, device: Any = None):
    """``images`` block → model input tensor.

    Parameters
    ----------
    batch : (n, H, W) float array in [0, 1] (NumPy, CuPy via DLPack, or torch)
    card : ModelCard

    Returns
    -------
    (n, card.channels, S, S) float32 torch tensor on ``device`` (S = ``card.input_size`` or H).
    """
    import torch

    if is_torch_array(batch):
        x = batch
    elif is_cupy_array(batch):
        x = torch.from_dlpack(batch)
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch))
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.to(torch.float32)
    if card.input_size and (x.shape[-2], x.shape[-1]) != (card.input_size, card.input_size):
        x = resize(x, (card.input_size, card.input_size), "area")
    x = x[:, None].expand(-1, card.channels, -1, -1)
    mean = torch.tensor(card.mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def predict(module: Any, batch: Any, card: ModelCard, *, device: Any = None) -> np.ndarray:
    """Scores of ``module`` on a block of images.

    Returns
    -------
    (n, len(card.labels)) float32 NumPy array, after the card's activation.
    """
    import torch

    with torch.inference_mode():
        x = to_model_input(batch, card, device)
        out = module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float().reshape(out.shape[0], -1)
        if card.activation == "sigmoid":
            out = torch.sigmoid(out)
        elif card.activation == "softmax":
            out = torch.softmax(out, dim=1)
        return out.cpu().numpy()
