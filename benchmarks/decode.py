"""Decode throughput per transfer syntax: radflow's decode path vs pydicom called directly, one core.

For each transfer syntax with an encoder installed, N synthetic 12-bit radiographs are
encoded in memory; then, on the same bytes,

* baseline "pydicom": ``pydicom.dcmread`` + ``ds.pixel_array``;
* radflow: ``read_dataset`` + ``header_from_dataset`` (limits, reasons) + ``decode_frames``
  (plugin order, recorded decoder) + the per-frame checksum that ingest records: CRC-32C (hardware,
  what new stores record) and, in the last columns, zlib's CRC-32 (what stores made before record).

Prints MB/s of decoded pixels per core and the ratios to pydicom.

    python benchmarks/decode.py [--n 8] [--size 2048]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=2048)
    args = p.parse_args()
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels.utils import compress
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
        JPEG2000Lossless, RLELossless, generate_uid,
    )

    from radflow.config import Limits
    from radflow.store.layout import FRAME_CHECKSUM, frame_crc32
    from radflow.dicom.read import decode_frames, header_from_dataset, read_dataset
    from radflow.synth.radiographs import chest_radiograph

    rng = np.random.default_rng(0)
    images = [np.round(chest_radiograph(args.size, args.size, rng) * 4095).astype(np.uint16) for _ in range(args.n)]

    def encode(pix: np.ndarray, ts) -> bytes:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.Rows, ds.Columns = pix.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if ts in (RLELossless, JPEG2000Lossless):
            compress(ds, ts, pix, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        else:
            ds.PixelData = pix.byteswap().tobytes() if ts == ExplicitVRBigEndian else pix.tobytes()
            ds.file_meta.TransferSyntaxUID = ts
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def pydicom_decode(data: bytes) -> int:
        return pydicom.dcmread(io.BytesIO(data)).pixel_array.nbytes

    def radflow_decode(data: bytes, checksum: str = FRAME_CHECKSUM) -> int:
        ds = read_dataset(data)
        frames, _ = decode_frames(ds, header_from_dataset(ds, Limits()))
        for f in frames:
            frame_crc32(f, checksum)  # CRC-32C: what a new store records; CRC-32: stores made before
        return frames.nbytes

    def radflow_decode_crc32(data: bytes) -> int:
        return radflow_decode(data, "crc32")

    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                RLELossless, JPEG2000Lossless]
    print(f"{args.n} radiographs of {args.size}², 12 bits stored; MB/s of decoded pixels on one core")
    print(f"{'transfer syntax':<40} {'pydicom':>9} {'radflow':>9} {'ratio':>7} {'(CRC-32)':>9} {'ratio':>7}")
    for ts in syntaxes:
        files = [encode(im, ts) for im in images]
        rates = []
        for fn in (pydicom_decode, radflow_decode, radflow_decode_crc32):
            fn(files[0])  # warm-up (plugin imports)
            t = time.perf_counter()
            total = sum(fn(f) for f in files)
            rates.append(total / (time.perf_counter() - t) / 1e6)
        print(f"{ts.name:<40} {rates[0]:>9.1f} {rates[1]:>9.1f} {rates[1] / rates[0]:>6.2f}x"
              f" {rates[2]:>9.1f} {rates[2] / rates[0]:>6.2f}x")
    print("Not measured (no encoder installed here): JPEG baseline/extended/lossless, JPEG-LS, HTJ2K;"
          " they decode through the same path (see `radflow info`).")


if __name__ == "__main__":
    main()
