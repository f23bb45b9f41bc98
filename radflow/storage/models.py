"""Model files: TorchScript archives or torchvision state_dicts, local or ``s3://``, with cards.

A model is identified by the sha256 of its weights file, recorded on every
prediction row. The card (labels, activation, input conventions) comes from
``<weights>.card.json`` beside the file, or from options. Nothing is ever downloaded
from a model hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any

from radflow.errors import ModelError
from radflow.storage.urls import filesystem, normalize
from radflow.tasks.infer import ModelCard

__all__ = ["ModelSpec", "LoadedModel", "load_model", "save_model", "card_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A reference to a model: where its weights are and (optionally) its card."""

    url: str
    arch: str = ""
    card: dict[str, Any] | None = None
    storage_options: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return json.dumps([self.url, self.arch, self.card], sort_keys=True, default=str)


@dataclass
class LoadedModel:
    module: Any
    card: ModelCard
    sha256: str
    kind: str  # "torchscript" | "state_dict"


def card_url(url: str) -> str:
    return f"{url}.card.json"


def _is_torchscript(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("constants.pkl") for n in names)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load a TorchScript file, or a torchvision architecture plus a state_dict file.

    Raises
    ------
    ModelError
        Unreadable file, unknown architecture, or a state_dict that does not fit the
        architecture (naming the first mismatched key).
    """
    import torch

    url = normalize(spec.url)
    fs, path = filesystem(url, spec.storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelError(f"model file {url!r} not found") from None
    sha = hashlib.sha256(data).hexdigest()
    card_dict: dict[str, Any] = {}
    cpath = card_url(path)
    if fs.exists(cpath):
        card_dict = json.loads(fs.cat_file(cpath))
    card_dict.update(spec.card or {})
    if spec.arch:
        card_dict["arch"] = spec.arch
    card = ModelCard.from_dict(card_dict)
    if _is_torchscript(data):
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        return LoadedModel(module, card, sha, "torchscript")
    if not card.arch:
        raise ModelError(
            f"{url!r} is not a TorchScript file; give the torchvision architecture of its state_dict "
            "(--arch resnet18, or 'arch' in the model card)"
        )
    from radflow.tasks.train import build_model

    module = build_model(card)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read state_dict {url!r}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    expected = module.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise ModelError(f"state_dict {url!r} does not fit {card.arch}: missing key {k!r}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(
                f"state_dict {url!r} does not fit {card.arch}: key {k!r} has shape {tuple(state[k].shape)}, "
                f"expected {tuple(v.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ModelError(f"state_dict {url!r} does not fit {card.arch}: unexpected key {extra[0]!r}")
    module.load_state_dict(state)
    return LoadedModel(module.eval(), card, sha, "state_dict")


def save_model(module: Any, card: ModelCard, url: str, *, torchscript: bool = False) -> str:
    """Write a model's weights (state_dict, or TorchScript) and its card beside them; return sha256."""
    import torch

    buf = io.BytesIO()
    if torchscript:
        torch.jit.save(torch.jit.script(module), buf)
    else:
        torch.save(module.state_dict(), buf)
    data = buf.getvalue()
    url = normalize(url)
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)
    fs.pipe_file(card_url(path), json.dumps(card.to_dict(), indent=2).encode())
    return hashlib.sha256(data).hexdigest()
