"""Memory of one task thread's work in the preprocess and features stages: radflow's way against the
straightforward one (the named baseline), measured in the same run, interleaved, with ``tracemalloc`` (the peak of
the bytes Python and NumPy allocate, in one process).

* preprocess, one frame: baseline "rescale first" — the stored integers made float32 by the modality
  LUT at full size, then resized; radflow's ``prepare_frame`` resizes the stored integers and rescales
  the small result (a linear LUT commutes with the resize).
* features, one range: baseline "whole range as float32" — the range read at once and converted
  (``images_block``); radflow's ``range_features`` over ``array_chunks`` (what ``stored_chunks`` reads
  in the stage), a stored chunk at a time, four frames as float32 at once. The array is laid out as
  ``images`` is at MIMIC-CXR's count (canvas 1024, float16, chunks of 32 frames, shards of 64, radflow's
  codecs).

Prints the peak MiB, the time, the ratios, and whether both ways give the same values.

    python benchmarks/frame_memory.py [--rows 3000] [--cols 2500] [--canvas 1024] [--frames 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc

import numpy as np


def _once(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, seconds, out


def _pair(baseline, ours, repeat: int):
    """``(peak MiB, seconds, result)`` medians of each, the two run in turn (interleaved: the machine's
    load weighs on both alike)."""
    runs: dict[int, list] = {0: [], 1: []}
    for _ in range(repeat):
        for i, fn in enumerate((baseline, ours)):
            runs[i].append(_once(fn))
    return [(statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2]) for rs in runs.values()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--cols", type=int, default=2500)
    p.add_argument("--canvas", type=int, default=1024)
    p.add_argument("--frames", type=int, default=64, help="frames of the features range (one shard)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import zarr

    from radflow.stages._images import array_chunks, unit_float
    from radflow.stages.features import range_features
    from radflow.store import layout
    from radflow.synth.radiographs import chest_radiograph
    from radflow.tasks.features import block_features
    from radflow.tasks.preprocess import (
        FrameParams, apply_modality_lut, fit_geometry, pad_to_canvas, percentile_normalize, prepare_frame, resize,
    )

    rng = np.random.default_rng(0)
    stored = np.round(chest_radiograph(args.rows, args.cols, rng) * 4095).astype(np.uint16)
    params = FrameParams(rows=args.rows, cols=args.cols, rescale_slope=1.0, rescale_intercept=-1024.0)
    h, w, top, left = fit_geometry(args.rows, args.cols, args.canvas)

    def rescale_first():
        x = resize(apply_modality_lut(stored, params.rescale_slope, params.rescale_intercept), (h, w))
        return pad_to_canvas(percentile_normalize(x), args.canvas, top, left)

    base, ours = _pair(rescale_first, lambda: prepare_frame(stored, params, args.canvas), args.repeat)
    rows = [("preprocess, one frame", "rescale first", base, "prepare_frame", ours, 1e-5)]

    small = np.round(chest_radiograph(args.rows // 4, args.cols // 4, rng) * 4095).astype(np.uint16)
    canvas = np.asarray(prepare_frame(small, FrameParams(rows=small.shape[0], cols=small.shape[1]), args.canvas))
    with tempfile.TemporaryDirectory() as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        images = layout.ensure_images_array(root, n=args.frames, canvas=args.canvas, dtype="float16", chunk_frames=32,
                                            shard_frames=args.frames)
        noise = rng.normal(0, 0.01, (args.frames, 1, 1)).astype(np.float32)
        images[:] = np.clip(canvas[None] + noise, 0, 1).astype(np.float16)
        geometry = np.tile([[args.rows, args.cols]], (args.frames, 1))

        def whole():
            return block_features(unit_float(np.asarray(images[0:args.frames])), geometry, canvas=args.canvas)

        def chunked():
            return range_features(array_chunks(images, 0, args.frames), geometry, canvas=args.canvas, cutoff=0.25)

        base, ours = _pair(whole, chunked, args.repeat)
        rows.append((f"features, one range of {args.frames} frames", "whole range as float32", base, "range_features",
                     ours, 0.0))

    print(f"frame {args.rows}x{args.cols} uint16, canvas {args.canvas}, median of {args.repeat} (tracemalloc peaks)")
    print(f"{'work':34s} {'baseline':24s} {'MiB':>6s} {'s':>6s}   {'radflow':16s} {'MiB':>6s} {'s':>6s}"
          f"  {'memory x':>8s} {'speed x':>7s}  same values")
    for work, base_name, (bm, bt, bo), ours_name, (om, ot, oo), tol in rows:
        same = np.allclose(np.asarray(bo), np.asarray(oo), atol=tol, rtol=0, equal_nan=True)
        print(f"{work:34s} {base_name:24s} {bm:6.0f} {bt:6.2f}   {ours_name:16s} {om:6.0f} {ot:6.2f}"
              f"  {om / bm:7.2f}x {bt / ot:6.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
