import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from skimage.measure import block_reduce
from skimage.transform import resize as sk_resize

from radflow.tasks.preprocess import (
    FrameParams, apply_modality_lut, fit_geometry, percentile_normalize, prepare_frame, resize, to_grayscale, window,
)

RNG = np.random.default_rng(0)


def both(x: np.ndarray):
    """The same input as NumPy and as a torch CPU tensor (the non-NumPy namespace path)."""
    return x, torch.from_numpy(x.copy())


def test_area_downscale_equals_block_mean():
    x = RNG.random((96, 64)).astype(np.float32)
    for arr in both(x):
        y = resize(arr, (24, 16), "area")
        assert type(y) is type(arr)
        np.testing.assert_allclose(np.asarray(y), block_reduce(x, (4, 4), np.mean), atol=1e-6)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(40, 50), (200, 300), (97, 60)])
def test_matches_pillow_antialiased_resampling(method, shape):
    # Pillow's float ("F") resampling uses the same anti-aliasing convention (kernel stretched
    # by the downscale factor, Keys a=-0.5 bicubic). Documented tolerance: 1e-5 absolute.
    from PIL import Image

    x = np.random.default_rng(3).random((97, 131)).astype(np.float32)
    pil = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[method]
    ref = np.asarray(Image.fromarray(x, mode="F").resize((shape[1], shape[0]), pil))
    for arr in both(x):
        np.testing.assert_allclose(np.asarray(resize(arr, shape, method)), ref, atol=1e-5)


def test_bilinear_upscale_matches_skimage_interior():
    x = RNG.random((20, 30)).astype(np.float32)
    ref = sk_resize(x, (60, 90), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(np.asarray(resize(x, (60, 90), "bilinear"))[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 300), st.integers(8, 300), st.integers(4, 200), st.integers(4, 200), st.sampled_from(["area", "bilinear", "bicubic"]))
def test_resize_preserves_constants_and_shape(h, w, oh, ow, method):
    x = np.full((h, w), 3.5, np.float32)
    y = resize(x, (oh, ow), method)
    assert y.shape == (oh, ow)
    np.testing.assert_allclose(y, 3.5, rtol=1e-5)


def test_numpy_and_torch_agree_on_prepare_frame():
    frame = (RNG.random((700, 500)) * 4000).astype(np.uint16)
    p = FrameParams(rows=650, cols=480, rescale_slope=0.5, rescale_intercept=10, monochrome1=True)
    a = prepare_frame(frame, p, 128)
    b = prepare_frame(torch.from_numpy(frame.astype(np.int32)), p, 128)
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
    assert a.shape == (128, 128) and a.dtype == np.float32
    np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    h, w, top, left = fit_geometry(650, 480, 128)
    assert (h, w) == (128, 95)
    assert np.all(a[:, :left] == 0) and np.all(a[:, left + w :] == 0)
    assert 0.0 <= a.min() and a.max() <= 1.0


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int32])
@pytest.mark.parametrize("windowed", [False, True])
def test_stored_integers_resized_before_the_rescale_equal_the_rescale_first(dtype, windowed):
    # prepare_frame resizes the stored integers and then applies the linear modality LUT (no float copy of
    # the full-size frame): the values equal those of rescaling first, for every stored width and sign
    info = np.iinfo(dtype)
    frame = RNG.integers(max(info.min, -3000), min(info.max, 4000), (700, 500)).astype(dtype)
    p = FrameParams(rows=650, cols=480, rescale_slope=0.75, rescale_intercept=-1024.0,
                    window_center=400.0 if windowed else float("nan"), window_width=1500.0 if windowed else float("nan"))
    h, w, top, left = fit_geometry(650, 480, 160)
    first = resize(apply_modality_lut(frame[:650, :480], 0.75, -1024.0), (h, w), "area")
    first = window(first, 400.0, 1500.0) if windowed else percentile_normalize(first)
    for arr in both(frame):
        out = prepare_frame(arr, p, 160)
        assert out.dtype in (np.float32, torch.float32)
        # (float32 rounding near the intercept, either order: ~2e-4 of ~100 units, 4e-6 once normalized)
        np.testing.assert_allclose(np.asarray(out)[top:top + h, left:left + w], first, atol=1e-5)


def test_an_integer_frame_resizes_as_float32():
    x = (RNG.random((90, 60)) * 60000).astype(np.uint16)
    for arr in both(x):
        y = resize(arr, (30, 20), "area")
        assert y.dtype in (np.float32, torch.float32)
        np.testing.assert_allclose(np.asarray(y), block_reduce(x.astype(np.float64), (3, 3), np.mean), rtol=1e-6)


def test_window_follows_dicom_linear_formula():
    x = np.array([0.0, 39.5, 40.0, 50.0, 60.0, 100.0], np.float32)
    y = window(x, center=50, width=21)
    expected = np.clip((x - 49.5) / 20 + 0.5, 0, 1)
    np.testing.assert_allclose(y, expected)
    with pytest.raises(ValueError):
        window(x, 50, 1)


def test_monochrome1_is_inverted():
    ramp = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    a = prepare_frame(ramp, FrameParams(rows=64, cols=64), 64)
    b = prepare_frame(ramp, FrameParams(rows=64, cols=64, monochrome1=True), 64)
    np.testing.assert_allclose(a + b, 1.0, atol=1e-6)
    assert a[0, -1] > a[0, 0]


def test_lut_percentile_and_gray():
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    for arr in both(x):
        y = percentile_normalize(arr, 10, 90)
        assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    np.testing.assert_allclose(apply_modality_lut(np.array([2], np.uint16), 2.0, -1.0), [3.0])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 100
    np.testing.assert_allclose(to_grayscale(rgb), 58.7, rtol=1e-5)


def test_mixed_namespaces_are_refused():
    from radflow.tasks._xp import namespace

    with pytest.raises(TypeError):
        namespace(np.zeros(2), torch.zeros(2))


def test_enhancements_run_on_numpy_and_torch():
    from radflow.tasks.preprocess import Enhancements, enhance

    frame = (RNG.random((300, 260)) * 1000).astype(np.uint16)
    opts = Enhancements(denoise="median", denoise_size=3, enhance="clahe", unsharp_amount=0.5)
    a = prepare_frame(frame, FrameParams(rows=300, cols=260), 96, enhancements=opts)
    b = prepare_frame(torch.from_numpy(frame.astype(np.int32)), FrameParams(rows=300, cols=260), 96, enhancements=opts)
    np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    plain = prepare_frame(frame, FrameParams(rows=300, cols=260), 96)
    assert not np.allclose(a, plain) and 0.0 <= a.min() and a.max() <= 1.0
    x = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_allclose(enhance(x, Enhancements(denoise="gaussian", denoise_size=1.5)),
                               __import__("scipy.ndimage", fromlist=["x"]).gaussian_filter(x, 1.5), atol=1e-6)
