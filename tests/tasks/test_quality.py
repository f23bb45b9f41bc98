import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from radflow.tasks.quality import nmse, psnr, ssim


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 64, 64))
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    return gt, pred


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_fastmri_definitions(pair, lib):
    gt, pred = pair
    a, b = (gt, pred) if lib == "numpy" else (torch.from_numpy(gt), torch.from_numpy(pred))
    assert nmse(a, b) == pytest.approx(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2, rel=1e-9)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()), rel=1e-9)
    ref = np.mean([structural_similarity(gt[i], pred[i], data_range=gt.max()) for i in range(3)])
    assert ssim(a, b) == pytest.approx(ref, rel=1e-6)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf") and nmse(a, a) == 0.0
