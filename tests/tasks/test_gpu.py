"""The same kernels on a CUDA device (CuPy arrays and CUDA torch tensors). Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import has_module

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy():
    if not has_module("cupy"):
        pytest.skip("cupy is not installed (pip install 'radflow[gpu]')")
    import cupy

    return cupy


def test_preprocess_and_filters_on_cupy(cupy):
    from radflow.tasks.contrast import clahe
    from radflow.tasks.filters import gaussian, median
    from radflow.tasks.preprocess import FrameParams, prepare_frame

    frame = (np.random.default_rng(0).random((300, 260)) * 4000).astype(np.uint16)
    host = prepare_frame(frame, FrameParams(rows=300, cols=260, monochrome1=True), 128)
    dev = prepare_frame(cupy.asarray(frame), FrameParams(rows=300, cols=260, monochrome1=True), 128)
    assert isinstance(dev, cupy.ndarray)
    np.testing.assert_allclose(dev.get(), host, atol=1e-4)
    x = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    np.testing.assert_allclose(gaussian(cupy.asarray(x), 1.5).get(), gaussian(x, 1.5), atol=1e-5)
    np.testing.assert_allclose(median(cupy.asarray(x), 3).get(), median(x, 3), atol=1e-6)
    np.testing.assert_allclose(clahe(cupy.asarray(x)).get(), clahe(x), atol=1e-4)


def test_recon_on_cupy(cupy):
    from radflow.tasks.recon import fbp, kspace_to_image

    rng = np.random.default_rng(2)
    sino = rng.random((64, 90)).astype(np.float32)
    np.testing.assert_allclose(fbp(cupy.asarray(sino), method="interp").get(), fbp(sino, method="interp"), atol=1e-3)
    k = (rng.standard_normal((4, 64, 64)) + 1j * rng.standard_normal((4, 64, 64))).astype(np.complex64)
    np.testing.assert_allclose(kspace_to_image(cupy.asarray(k)).get(), kspace_to_image(k), rtol=1e-4)


def test_predict_on_cuda_torch():
    import torch

    from radflow.tasks.infer import ModelCard, predict
    from radflow.tasks.train import build_model

    card = ModelCard(arch="resnet18", labels=("a",), input_size=64, channels=3)
    model = build_model(card).eval()
    x = np.random.default_rng(3).random((6, 96, 96)).astype(np.float32)
    cpu = predict(model, x, card)
    gpu = predict(model.to("cuda"), x, card, micro_batch=4, autocast=None)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    half = predict(model, x, card, autocast="bf16")
    np.testing.assert_allclose(half, cpu, atol=5e-2)


def test_local_cuda_cluster_shares_one_rmm_pool(cupy):
    if not has_module("dask_cuda") or not has_module("rmm"):
        pytest.skip("dask-cuda and rmm are needed (pip install 'radflow[gpu]')")
    from radflow.cluster import connect
    from radflow.config import ClusterSettings

    def allocators():
        import cupy
        import rmm
        import torch

        x = cupy.zeros(1 << 20)
        t = torch.zeros(1 << 20, device="cuda")
        return type(rmm.mr.get_current_device_resource()).__name__, cupy.cuda.get_allocator().__module__, \
            torch.cuda.memory.get_allocator_backend(), float(x.sum() + t.sum().item())

    with connect(ClusterSettings(kind="local-cuda", rmm_pool_size=0.3)) as client:
        out = client.run(allocators)
    for resource, cupy_alloc, torch_backend, total in out.values():
        assert "Pool" in resource and "rmm" in cupy_alloc and total == 0.0
