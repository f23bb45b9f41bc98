"""Batched model inference on a block of ``images`` (pure: arrays in, scores out).

:func:`predict` runs any callable module (a torch ``nn.Module``, a TorchScript module
or an ONNX Runtime wrapper) over a block in micro-batches. On a CUDA device the host
batch is pinned and copied asynchronously on a side stream while the previous
micro-batch computes, autocast (bf16/fp16) is optional, and an out-of-memory error
halves the micro-batch and retries. On the CPU it runs under ``inference_mode`` with
channels-last memory format where the card asks for it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from radflow.tasks._xp import is_cupy_array, is_torch_array
from radflow.tasks.preprocess import resize

__all__ = ["ModelCard", "to_model_input", "predict", "Prediction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """How a model wants its input and what its outputs mean.

    ``input_size`` 0 means "as stored" (the ``images`` canvas); ``channels`` 3 repeats
    the grey image (ImageNet-style models); ``mean``/``std`` normalize per channel.
    Empty ``labels`` name the outputs ``0, 1, …``. ``format`` picks a loader
    (``torchscript``, ``state_dict``, ``onnx`` or a registered one); empty = detect.
    ``embedding_layer`` names the module whose *input* is the penultimate embedding
    (``fc`` for ResNets, ``classifier`` for DenseNets). ``channels_last`` runs torch
    modules in channels-last memory format (measured here on the CPU: ResNet-18 and
    DenseNet-121 forward passes 1.5× faster).
    """

    name: str = "model"
    arch: str = ""
    labels: tuple[str, ...] = ()
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    input_size: int = 0
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    version: str = ""
    format: str = ""
    embedding_layer: str = ""
    channels_last: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("labels", "mean", "std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("labels", "mean", "std"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


@dataclass
class Prediction:
    """Scores ``(n, outputs)`` float32 after the activation, and optional embeddings ``(n, d)`` float32."""

    scores: np.ndarray
    embeddings: np.ndarray | None = None


#: float32 bytes of the frames ``to_model_input`` converts and resizes at once (16 MiB: 16 canvases of 512²)
_SLICE_BYTES = 16 * 2**20


def _as_torch(batch: Any):
    import torch

    if is_torch_array(batch):
        return batch
    if is_cupy_array(batch):
        return torch.from_dlpack(batch)
    return torch.from_numpy(np.ascontiguousarray(batch))


def to_model_input(batch: Any, card: ModelCard, device: Any = None):
    """``images`` block → model input tensor.

    Parameters
    ----------
    batch : (n, H, W) float array in [0, 1] (NumPy, CuPy via DLPack, or torch); a float16 block (as
        ``images`` stores it) is converted and resized a few frames at a time, to the same values
    card : ModelCard

    Returns
    -------
    (n, card.channels, S, S) float32 torch tensor on ``device`` (S = ``card.input_size`` or H).
    """
    import torch

    x = _as_torch(batch)
    if device is not None and x.device != torch.device(device):
        x = x.to(device, non_blocking=True)
    size = (card.input_size, card.input_size) if card.input_size else (x.shape[-2], x.shape[-1])
    if (x.shape[-2], x.shape[-1]) == size:
        x = x.to(torch.float32)
    else:  # a float16 block (large canvases, as stored) a few frames at a time: never whole in float32
        n = max(1, x.shape[0])  # (an empty block: one empty part)
        step = n if x.dtype == torch.float32 else max(1, _SLICE_BYTES // max(1, 4 * x.shape[-2] * x.shape[-1]))
        parts = [resize(x[i : i + step].to(torch.float32), size, "area") for i in range(0, n, step)]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
    x = x[:, None].expand(-1, card.channels, -1, -1)
    mean = torch.tensor(card.mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if card.channels_last else x.contiguous()


def check_output(shape: tuple[int, ...], rows: int, labels: tuple[str, ...] | list[str] = ()) -> None:
    """The output contract: ``(batch, outputs)``, with one output per card label when the card names
    labels. ``ValueError`` saying what the model returned otherwise (a segmentation map, a 1-D vector)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or shape[0] != rows:
        raise ValueError(f"the model returned shape {shape} for a batch of {rows}; radflow needs (batch, outputs) "
                         f"scores, one column per label{' (' + ', '.join(labels) + ')' if labels else ''}")
    if labels and shape[1] != len(labels):
        raise ValueError(f"the model returned {shape[1]} outputs per image but its card names {len(labels)} labels "
                         f"({', '.join(labels)})")


def _activate(out, activation: str):
    import torch

    out = out.float().reshape(out.shape[0], -1)
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation == "softmax":
        return torch.softmax(out, dim=1)
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def predict(
    module: Any,
    batch: Any,
    card: ModelCard,
    *,
    device: Any = None,
    micro_batch: int | None = None,
    autocast: Literal["bf16", "fp16"] | None = None,
    embeddings: bool = False,
    prepared: bool = False,
) -> np.ndarray | Prediction:
    """Scores of ``module`` on a block of images.

    Parameters
    ----------
    module : callable on a ``(b, C, S, S)`` float32 tensor (on ``device``) returning logits
    batch : (n, H, W) float array in [0, 1] (NumPy, CuPy or torch)
    device : torch device to run on (default: the module's parameters' device, else CPU)
    micro_batch : frames per forward pass (default: the whole block); halved on out-of-memory
    autocast : run the forward pass under bf16/fp16 autocast
    embeddings : also return the input of ``card.embedding_layer`` (penultimate features)
    prepared : ``batch`` is already the model input ``(n, C, S, S)`` (from :func:`to_model_input`)

    Returns
    -------
    ``(n, outputs)`` float32 NumPy scores after the card's activation, or a
    :class:`Prediction` with embeddings when ``embeddings=True``.
    """
    import torch

    if device is None:
        params = getattr(module, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    host = _as_torch(batch)
    n = host.shape[0]
    prepare = (lambda t: t.to(device, non_blocking=True)) if prepared else (lambda t: to_model_input(t, card, device))
    step = max(1, micro_batch or n)
    cuda = device.type == "cuda"
    if cuda and host.device.type == "cpu" and not host.is_pinned():
        host = host.pin_memory()
    captured: list[Any] = []
    hook = None
    if embeddings:
        if not card.embedding_layer or not hasattr(module, "get_submodule"):
            raise ValueError("embeddings need a torch module and 'embedding_layer' in the model card")
        hook = module.get_submodule(card.embedding_layer).register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().float().flatten(1).cpu())
        )
    scores: list[Any] = []
    try:
        with torch.inference_mode():
            start = 0
            copy_stream = torch.cuda.Stream(device) if cuda else None
            pending = None
            while start < n:
                stop = min(n, start + step)
                try:
                    if pending is not None and pending[0] == (start, stop):
                        torch.cuda.current_stream(device).wait_stream(copy_stream)
                        x = pending[1]
                    else:
                        x = prepare(host[start:stop])
                    nxt = (stop, min(n, stop + step))
                    if cuda and nxt[0] < n:  # prefetch the next micro-batch while this one computes
                        with torch.cuda.stream(copy_stream):
                            pending = (nxt, prepare(host[nxt[0] : nxt[1]]))
                    else:
                        pending = None
                    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        out = module(x)
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    check_output(tuple(out.shape), stop - start, tuple(card.labels))
                    scores.append(_activate(out, card.activation).cpu())
                    start = stop
                except Exception as exc:
                    if not _is_oom(exc) or step == 1:
                        raise
                    step = max(1, step // 2)
                    pending = None
                    if cuda:
                        torch.cuda.empty_cache()
                    log.warning("out of memory at micro-batch %d; retrying with %d", stop - start, step)
    finally:
        if hook is not None:
            hook.remove()
    result = torch.cat(scores).numpy() if scores else np.zeros((0, 0), np.float32)
    if embeddings:
        return Prediction(result, torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32))
    return result
