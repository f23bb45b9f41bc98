"""Model files: TorchScript, torchvision state_dicts, ONNX, or any format a site registers.

A model is identified by the sha256 of its weights file, recorded on every prediction
row. Its card (labels, activation, input conventions) comes from
``<weights>.card.json`` / ``.card.yaml`` beside the file, updated by options. Loaders
are looked up by format name: the built-ins ``torchscript``, ``state_dict`` and
``onnx``, plus entry points in the group ``radflow.model_loaders`` (a callable
``loader(data: bytes, card: ModelCard) -> module``, the module called on a float32
``(b, C, S, S)`` torch tensor and returning logits). Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

from radflow.errors import MissingDependencyError, ModelError
from radflow.store.urls import filesystem, normalize
from radflow.tasks.infer import ModelCard

__all__ = ["ModelSpec", "LoadedModel", "load_model", "save_model", "card_url", "loaders", "OnnxModule", "read_card_file"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "radflow.model_loaders"


@dataclass(frozen=True)
class ModelSpec:
    """A reference to a model: where its weights are, and options over its card."""

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
    kind: str  # the loader's format name


def card_url(url: str, suffix: str = ".card.json") -> str:
    return f"{url}{suffix}"


# -- built-in loaders --------------------------------------------------------------------


def _load_torchscript(data: bytes, card: ModelCard) -> Any:
    import torch

    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def _load_state_dict(data: bytes, card: ModelCard) -> Any:
    import torch

    from radflow.tasks.train import build_model

    if not card.arch:
        raise ModelError("not a TorchScript or ONNX file; give the torchvision architecture of its state_dict "
                         "(--arch resnet18, or 'arch' in the model card)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read the state_dict: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not card.labels:  # no card: as many outputs as the last layer's weight has rows, named 0, 1, ...
        weights = [v for k, v in state.items() if k.endswith(".weight") and getattr(v, "ndim", 0) == 2]
        if not weights:
            raise ModelError(f"the state_dict has no final linear layer to count {card.arch}'s outputs; "
                             "name them in a model card ('labels')")
        card = dataclasses.replace(card, labels=tuple(str(i) for i in range(int(weights[-1].shape[0]))))
    module = build_model(card)
    expected = module.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise ModelError(f"state_dict does not fit {card.arch}: missing key {k!r}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(f"state_dict does not fit {card.arch}: key {k!r} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(v.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ModelError(f"state_dict does not fit {card.arch}: unexpected key {extra[0]!r}")
    module.load_state_dict(state)
    return module.eval()


class OnnxModule:
    """An ONNX Runtime session called like a torch module (torch tensor in, torch tensor out)."""

    def __init__(self, data: bytes, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("ONNX models need onnxruntime; pip install onnxruntime") from exc
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(data, sess_options=options, providers=chosen or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def set_threads(self, n: int) -> None:
        pass  # ONNX Runtime sizes its own pool from the process's cores

    def __call__(self, x: Any) -> Any:
        import torch

        host = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: host})[0]
        return torch.from_numpy(out).to(x.device)


def _load_onnx(data: bytes, card: ModelCard) -> Any:
    return OnnxModule(data)


_BUILTIN: dict[str, Callable[[bytes, ModelCard], Any]] = {
    "torchscript": _load_torchscript,
    "state_dict": _load_state_dict,
    "onnx": _load_onnx,
}


@functools.lru_cache(maxsize=1)
def loaders() -> dict[str, Callable[[bytes, ModelCard], Any]]:
    """Format name → loader: the built-ins plus the ``radflow.model_loaders`` entry points."""
    from importlib.metadata import entry_points

    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN:
            log.warning("entry point %s does not replace the built-in %r loader", ep.value, ep.name)
            continue
        found[ep.name] = ep.load()
    return found


def _detect_format(url: str, data: bytes) -> str:
    suffix = url.rsplit(".", 1)[-1].lower() if "." in url.rsplit("/", 1)[-1] else ""
    if suffix in loaders() and suffix not in ("torchscript", "state_dict"):
        return suffix  # e.g. ".onnx", or a registered format named by its suffix
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
        if any(n.split("/", 1)[-1].startswith("code/") or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "state_dict"
    except zipfile.BadZipFile:
        pass
    return "onnx" if data[:1] == b"\x08" else "state_dict"  # ONNX protobufs start with field 1 (ir_version)


def _parse_card(text: bytes | str, yaml_text: bool) -> dict[str, Any]:
    if not yaml_text:
        return json.loads(text)
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError("YAML model cards need pyyaml; pip install pyyaml") from exc
    return yaml.safe_load(text) or {}


def read_card_file(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model card file (``.json``, ``.yaml``/``.yml``) as a dict."""
    fs, path = filesystem(normalize(url), storage_options)
    return _parse_card(fs.cat_file(path), not path.endswith(".json"))


def _read_card(fs, path: str) -> dict[str, Any]:
    for suffix in (".card.json", ".card.yaml", ".card.yml"):
        cpath = card_url(path, suffix)
        if fs.exists(cpath):
            return _parse_card(fs.cat_file(cpath), suffix != ".card.json")
    return {}


def weights_sha256(spec: ModelSpec) -> str:
    """The sha256 of the model's weights file (what identifies it on every prediction), without loading it."""
    url = normalize(spec.url)
    fs, path = filesystem(url, spec.storage_options)
    try:
        return hashlib.sha256(fs.cat_file(path)).hexdigest()
    except FileNotFoundError:
        raise ModelError(f"model file {url!r} not found") from None


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model ``spec`` names, with its card.

    Raises
    ------
    ModelError
        Unreadable file, unknown format or architecture, or a state_dict that does not
        fit its architecture (naming the first mismatched key).
    """
    url = normalize(spec.url)
    fs, path = filesystem(url, spec.storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise ModelError(f"model file {url!r} not found") from None
    card_dict = _read_card(fs, path)
    card_dict.update(spec.card or {})
    if spec.arch:
        card_dict["arch"] = spec.arch
    card = ModelCard.from_dict(card_dict)
    fmt = card.format or _detect_format(url, data)
    loader = loaders().get(fmt)
    if loader is None:
        raise ModelError(f"no loader for model format {fmt!r}; known: {', '.join(sorted(loaders()))} "
                         f"(register one under the entry-point group {ENTRY_POINT_GROUP!r})")
    try:
        module = loader(data, card)
    except ModelError as exc:
        raise ModelError(f"{url!r}: {exc}") from None
    if "channels" not in card_dict:  # no card says: as many as the first convolution takes (3 for torchvision's)
        card = dataclasses.replace(card, channels=_input_channels(module) or card.channels)
    return LoadedModel(module, card, hashlib.sha256(data).hexdigest(), fmt)


def _input_channels(module: Any) -> int:
    """Input channels of a torch module's first 2-D convolution (0 when it has none, or is not torch)."""
    try:
        params = module.parameters()
    except (AttributeError, RuntimeError):
        return 0
    return next((int(p.shape[1]) for p in params if getattr(p, "ndim", 0) == 4), 0)


def save_model(module: Any, card: ModelCard, url: str, *, format: str = "state_dict",
               example: Any = None) -> str:
    """Write a model (``state_dict``, ``torchscript`` or ``onnx``) and its card beside it; return sha256.

    ``example`` is an input tensor for ONNX export (batch axis exported as dynamic).
    """
    import torch

    buf = io.BytesIO()
    if format == "torchscript":
        torch.jit.save(torch.jit.script(module), buf)
    elif format == "onnx":
        if example is None:
            raise ModelError("ONNX export needs an example input tensor")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buf, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    else:
        torch.save(module.state_dict(), buf)
    data = buf.getvalue()
    url = normalize(url)
    fs, path = filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)
    fs.pipe_file(card_url(path), json.dumps({**card.to_dict(), "format": format}, indent=2).encode())
    return hashlib.sha256(data).hexdigest()
