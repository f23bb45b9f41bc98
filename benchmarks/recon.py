"""Reconstruction speed against the reference libraries, measured in one run.

* ``fbp`` (radflow, numba back-projection) vs ``skimage.transform.iradon`` on Shepp–Logan
  phantoms (256² and 512², 180 and 720 angles, ramp filter): seconds, speed-up, and
  RMSE against the phantom inside the reconstruction circle.
* ``kspace_to_image`` vs a plain NumPy reference (``numpy.fft`` with ``fftshift``
  copies, then root-sum-of-squares) on 15-coil 640×368 k-space (fastMRI knee size).

    python benchmarks/recon.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(fn, repeat: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, rescale

    from radflow.tasks.recon import fbp, kspace_to_image

    print(f"{'case':<34} {'baseline s':>11} {'radflow s':>10} {'speed-up':>9} {'RMSE base':>10} {'RMSE ours':>10}")
    for n, angles in ((256, 180), (256, 720), (512, 180), (512, 720)):
        ph = rescale(shepp_logan_phantom(), n / 400, anti_aliasing=False)
        theta = np.linspace(0, 180, angles, endpoint=False)
        sino = radon(ph, theta)
        s32 = sino.astype(np.float32)
        fbp(s32, theta)  # compile once (cached on disk afterwards)
        t_ref, ref = best_of(lambda: iradon(sino, theta, filter_name="ramp"), args.repeat)
        t_ours, ours = best_of(lambda: fbp(s32, theta, filter="ramp"), args.repeat)
        mask = np.hypot(*(np.mgrid[:n, :n] - n // 2)) <= n // 2
        rmse = lambda a: float(np.sqrt(np.mean((a - ph)[mask] ** 2)))  # noqa: E731
        print(f"{f'fbp {n}² {angles} angles vs iradon':<34} {t_ref:>11.3f} {t_ours:>10.3f} {t_ref / t_ours:>8.1f}x "
              f"{rmse(ref):>10.5f} {rmse(ours):>10.5f}")
    rng = np.random.default_rng(0)
    shape = (15, 640, 368)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)

    def numpy_reference(x):
        img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
        return np.sqrt((np.abs(img) ** 2).sum(axis=0))

    t_ref, ref = best_of(lambda: numpy_reference(k), args.repeat)
    t_ours, ours = best_of(lambda: kspace_to_image(k), args.repeat)
    err = float(np.abs(ours - ref).max() / ref.max())
    print(f"{'kspace_to_image 15x640x368 vs numpy':<34} {t_ref:>11.3f} {t_ours:>10.3f} {t_ref / t_ours:>8.1f}x "
          f"{'max rel err':>10} {err:>10.1e}")


if __name__ == "__main__":
    main()
