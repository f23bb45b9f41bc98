"""Models: loading (TorchScript, torchvision + state_dict, ONNX, entry-point loaders), model cards,
and the per-worker model cache."""
