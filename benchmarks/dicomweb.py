"""A DICOMweb ingest against a folder ingest of the same instances (the baseline), and the export round trip.

Starts a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, on 127.0.0.1) behind a counting proxy,
uploads a synthetic archive, and runs, start to exit, ``radflow ingest FOLDER`` and ``radflow ingest
dicomweb+http://…`` on the same instances (the folder laid out by UID, so both plan the same batches).
Prints wall time, MB/s, HTTP requests made and whether the stores' content agrees (every array and
every table but the columns that name the place). Then predicts with a small model and exports the
predictions as DICOM SR to a second Orthanc, and counts what comes back through QIDO-RS.

    python benchmarks/dicomweb.py --n 500
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import quiet  # noqa: E402

SIZES = ((512, 512), (600, 480), (1024, 768))


def _cli(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "radflow", *args], env=env, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="synthetic radiographs (default 500)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    quiet()
    import pydicom
    import torch

    from radflow.synth import write_archive
    from tests.helpers import content_apart_from_place
    from tests.orthanc import PASSWORD, USER, FaultProxy, Orthanc

    work = tempfile.mkdtemp(prefix="radflow-bench-dicomweb-")
    env = {**os.environ, "RADFLOW_DICOMWEB__USERNAME": USER, "RADFLOW_DICOMWEB__PASSWORD": PASSWORD}
    os.environ.update({k: env[k] for k in ("RADFLOW_DICOMWEB__USERNAME", "RADFLOW_DICOMWEB__PASSWORD")})
    archive = Orthanc(os.path.join(work, "archive")).start()
    results = Orthanc(os.path.join(work, "results")).start()
    try:
        synth = write_archive(os.path.join(work, "synth"), args.n, seed=11, sizes=SIZES, broken=False)
        folder = os.path.join(work, "folder")
        t0 = time.perf_counter()
        total = 0
        for d, _, files in os.walk(synth.dicom):
            for f in files:
                path = os.path.join(d, f)
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                if archive.upload(path) != "Success":
                    continue
                dst = os.path.join(folder, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(path, dst)
                total += os.path.getsize(path)
        upload_s = time.perf_counter() - t0
        print(f"{args.n} instances, {total / 1e6:.1f} MB, uploaded to Orthanc in {upload_s:.1f} s\n")
        common = ["--workers", str(args.workers)]
        a, b = os.path.join(work, "folder.zarr"), os.path.join(work, "dicomweb.zarr")
        folder_s = _cli("ingest", folder, a, *common, env=env)
        with FaultProxy(archive.http) as proxy:
            web_s = _cli("ingest", proxy.dicomweb, b, *common, env=env)
            requests = dict(proxy.requests)
            most = proxy.most_in_flight
        same = content_apart_from_place(a) == content_apart_from_place(b)
        rows = [("folder (baseline)", folder_s, "-", "-"),
                ("DICOMweb", web_s, f"{sum(requests.values())} ({requests.get('retrieve', 0)} retrieves)", str(most))]
        print(f"{'ingest':<20}{'wall s':>8}{'MB/s':>8}{'ratio':>7}  {'HTTP requests':<24}{'most in flight':>15}")
        for name, s, req, inflight in rows:
            print(f"{name:<20}{s:>8.1f}{total / 1e6 / s:>8.1f}{folder_s / s:>7.2f}  {req:<24}{inflight:>15}")
        print(f"content equal (arrays, instances, headers, ledger): {same}\n")

        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(4, 1))
        model = os.path.join(work, "tiny-net.pt")
        torch.jit.script(net).save(model)
        with open(model + ".card.json", "w") as fh:
            fh.write('{"labels": ["finding"], "activation": "sigmoid", "name": "tiny-net"}')
        _cli("process", b, "--steps", "preprocess,infer", "--canvas", "64", "--model", model, *common, env=env)
        t0 = time.perf_counter()
        # the store's source was the proxy (gone now): the archive is listed again where it is
        _cli("export", b, "--predictions", "--to", results.dicomweb, "--source", archive.dicomweb, env=env)
        export_s = time.perf_counter() - t0
        check_roundtrip(b, results, folder, export_s)
    finally:
        archive.stop()
        results.stop()
        shutil.rmtree(work, ignore_errors=True)


def check_roundtrip(store: str, results, folder: str, export_s: float) -> None:
    """The SRs found back through QIDO-RS: in the source's study, referencing a source image, with its values."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    import radflow
    from radflow.config import Settings, resolve_secret_key
    from radflow.dicom.pseudonym import remap_uid
    from radflow.dicom.sr import report_summary
    from tests.orthanc import PASSWORD, USER

    studies = {sop: study for study in os.listdir(folder) for series in os.listdir(os.path.join(folder, study))
               for sop in os.listdir(os.path.join(folder, study, series))}
    preds = radflow.open_store(store).predictions().set_index("sop_uid")["p_finding"]
    key = resolve_secret_key(Settings())
    web = DICOMwebClient(results.dicomweb[len("dicomweb+"):], session=create_session_from_user_pass(USER, PASSWORD))
    found = web.search_for_instances(fields=["00080060"], get_remaining=True)
    right = 0
    for item in found:
        sr = web.retrieve_instance(item["0020000D"]["Value"][0], item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        s = report_summary(sr)
        ref = s["referenced"][0]
        ok = (ref in studies and sr.StudyInstanceUID == studies[ref]
              and abs(s["values"]["p_finding"] - float(preds[remap_uid(key, ref)])) < 1e-6)
        right += ok
    print(f"export: {len(preds)} predicted instances → {len(found)} SRs found back through QIDO-RS in {export_s:.1f} s "
          f"(export command start to exit); {right} reference the right source image in its own study with its value")


if __name__ == "__main__":
    main()
