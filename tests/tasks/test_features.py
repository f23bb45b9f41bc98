import numpy as np
import torch
from skimage.feature import graycomatrix, graycoprops

from radflow.tasks.features import FEATURES, block_features, frame_features, glcm_contrast_homogeneity, high_frequency_fraction


def test_glcm_matches_skimage():
    x = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    q = np.clip(np.floor(x * 32), 0, 31).astype(np.uint8)
    g = graycomatrix(q, [1], [0, np.pi / 2], levels=32, symmetric=True, normed=True)
    c, h = glcm_contrast_homogeneity(x)
    np.testing.assert_allclose(c, graycoprops(g, "contrast").mean(), rtol=1e-9)
    np.testing.assert_allclose(h, graycoprops(g, "homogeneity").mean(), rtol=1e-9)


def test_high_frequency_fraction_separates_smooth_from_noise():
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.sin(2 * np.pi * xx / 64).astype(np.float32)
    fine = np.sin(2 * np.pi * xx * 0.4).astype(np.float32)  # 0.4 cycles/pixel
    assert high_frequency_fraction(smooth, 0.25) < 1e-6
    assert high_frequency_fraction(fine, 0.25) > 0.99


def test_numpy_and_torch_give_same_features():
    x = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    a = frame_features(x)
    b = frame_features(torch.from_numpy(x))
    assert a.shape == (len(FEATURES),)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a[FEATURES.index("mean")], x.mean(), rtol=1e-6)
    np.testing.assert_allclose(a[FEATURES.index("p50")], np.quantile(x, 0.5), rtol=1e-5)


def test_block_features_use_content_area_and_mark_empty_slots():
    block = np.zeros((3, 32, 32), np.float32)
    block[0, :, 8:24] = 0.5  # a 64x32 frame fitted into 32: content 32x16 at left=8
    geometry = np.array([[64, 32], [0, 0], [32, 32]])
    out = block_features(block, geometry, canvas=32)
    assert np.isnan(out[1]).all()
    assert out[0, FEATURES.index("mean")] == 0.5 and out[0, FEATURES.index("std")] == 0
    assert out[2, FEATURES.index("mean")] == 0.0
