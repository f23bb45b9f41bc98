"""Writes the notebooks of this folder from the cell sources below (so they diff as text and
stay in step with the API): ``python notebooks/_build.py``. CI executes the .ipynb files
with nbmake; ``tests/test_notebooks.py`` checks they match this file."""

from __future__ import annotations

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import os, tempfile
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RADFLOW_SECRET_KEY", "notebook-demo-key-for-synthetic-data-only")  # real work: your key file
work = tempfile.mkdtemp(prefix="radflow-nb-")
work'''

NOTEBOOKS = {
    "01_explore_store.ipynb": [
        ("md", "# Exploring a radflow store\n\nA store is Zarr arrays plus Parquet tables. This notebook makes a small "
               "synthetic archive, ingests and processes it, then looks at it the way an analyst would: images with "
               "their metadata through **xarray**, distributions with **matplotlib**, and SQL over the tables with "
               "**DuckDB** (pandas works just as well)."),
        ("code", SETUP),
        ("code", '''import radflow
from radflow.synth import write_archive

archive = write_archive(os.path.join(work, "archive"), 24, seed=3, sizes=((512, 512), (600, 480)))
store_url = os.path.join(work, "store.zarr")
summary = radflow.ingest(archive.dicom, store_url, settings={"cluster": {"n_workers": 1}})
radflow.process(store_url, steps=["preprocess", "features"], canvas=256, settings={"cluster": {"n_workers": 1}})
{k: summary[k] for k in ("discovered", "ok", "rejected", "frames")}'''),
        ("md", "## Images and their metadata\n\n`store.dataset()` is an `xarray.Dataset` over the fixed-canvas "
               "`images` array (lazy, Dask-backed), with the `instances` columns as coordinates."),
        ("code", '''store = radflow.open_store(store_url)
ds = store.dataset()
ds'''),
        ("code", '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for ax, i in zip(axes.ravel(), range(8)):
    frame = ds.isel(frame=i)
    ax.imshow(frame["images"].values, cmap="gray")
    ax.set_title(f"{str(frame.modality.values)} {str(frame.view.values)} · patient {str(frame.patient_key.values)[:6]}", fontsize=8)
    ax.axis("off")
fig.tight_layout()'''),
        ("md", "The native-resolution original of any frame, bit-exact as pydicom decoded it:"),
        ("code", '''raw = store.raw_frame(0)
raw.shape, raw.dtype, int(raw.min()), int(raw.max())'''),
        ("md", "## Intensity and feature distributions"),
        ("code", '''feats = store.features()
inst = store.instances()
table = feats.merge(inst[["index", "modality", "view", "rows", "cols"]], on="index")
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
for ax, col in zip(axes, ["mean", "glcm_contrast", "hf_energy_fraction"]):
    for modality, g in table.groupby("modality"):
        ax.hist(g[col], bins=15, alpha=0.6, label=modality)
    ax.set_title(col)
axes[0].legend()
fig.tight_layout()
table.describe().T.head(12)'''),
        ("md", "## SQL over the Parquet tables\n\nEvery table is a set of Parquet files: DuckDB, pandas, polars or "
               "Spark read them directly. A store's version lists its own files (`store.parts(name)`); read those "
               "(a folder can also hold files that only older versions use)."),
        ("code", '''import duckdb

instances, features, ledger = (store.parts(name) for name in ("instances", "features", "ledger"))
duckdb.sql(f"""
    SELECT i.modality, i.view, count(*) AS frames, round(avg(f.mean), 3) AS mean_intensity
    FROM read_parquet({instances}) i
    JOIN read_parquet({features}) f USING (index)
    GROUP BY ALL ORDER BY frames DESC
""").df()'''),
        ("code", '''duckdb.sql(f"""
    SELECT status, coalesce(reason, '') AS reason, count(*) AS inputs
    FROM read_parquet({ledger}) GROUP BY ALL ORDER BY inputs DESC
""").df()'''),
        ("md", "Headers are kept de-identified (DICOM PS3.15 Annex E) in the `headers` table:"),
        ("code", '''h = store.headers(parse=True)
d = h["dataset"].iloc[0]
{"PatientID": d.PatientID, "PatientIdentityRemoved": d.PatientIdentityRemoved, "StudyDate": d.get("StudyDate"),
 "privacy": store.privacy["deidentification_method"]}'''),
    ],
    "02_run_on_a_cluster.ipynb": [
        ("md", "# Running radflow on a Dask cluster\n\nStart (or connect to) a cluster, run a flow on it, watch the "
               "Dask dashboard while it runs, and read the Prefect artifact the run published. The same code runs "
               "against a remote scheduler (`Client(\"tcp://scheduler:8786\")`) or a Kubernetes cluster "
               "(`RADFLOW_CLUSTER__KIND=kubernetes`)."),
        ("code", SETUP),
        ("code", '''from distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0")
client = Client(cluster)
print("Dask dashboard:", client.dashboard_link)  # open it while the next cell runs
client'''),
        ("code", '''import radflow
from radflow.synth import write_archive

archive = write_archive(os.path.join(work, "archive"), 16, seed=5, sizes=((512, 512),))
store_url = os.path.join(work, "store.zarr")
summary = radflow.ingest(archive.dicom, store_url, cluster=cluster.scheduler_address,
                         settings={"performance_report": True})
{k: summary[k] for k in ("discovered", "ok", "frames", "batches", "mb_per_s", "performance_report")}'''),
        ("md", "Which worker did what (the same data the dashboard's task stream shows):"),
        ("code", '''client.run(lambda dask_worker: dask_worker.state.executed_count)'''),
        ("md", "## The Prefect artifact\n\nEach run publishes a Markdown summary; in the Prefect UI it sits on the "
               "flow run's page. Here it is read back through Prefect's API:"),
        ("code", '''import asyncio
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import ArtifactSort

async def latest(key):
    async with get_client() as c:
        arts = await c.read_artifacts(limit=20, sort=ArtifactSort.CREATED_DESC)
    return next(a for a in arts if a.key == key)

from IPython.display import Markdown
Markdown((await latest("radflow-ingest")).data)'''),
        ("md", "## What is in the store"),
        ("code", '''from radflow.store.inspect import describe

info = describe(store_url)
info["privacy"], info["tables"], f"{info['objects_per_1000_inputs']:.0f} objects per 1,000 inputs"'''),
        ("code", '''client.close()
cluster.close()'''),
    ],
    "03_reconstruction.ipynb": [
        ("md", "# Reconstruction: k-space and sinograms\n\nfastMRI-format multi-coil k-space and CT sinograms are "
               "ingested like DICOM, reconstructed on Dask (`process --steps reconstruct`), and compared with "
               "their references (NMSE, PSNR, SSIM in the `features` table)."),
        ("code", SETUP),
        ("code", '''import radflow
from radflow.synth.kspace import write_fastmri
from radflow.synth.sinograms import write_sinograms

raw = os.path.join(work, "raw")
write_fastmri(os.path.join(raw, "mr"), 1, slices=2, coils=4, shape=(128, 128), crop=(96, 96), seed=1)
write_sinograms(os.path.join(raw, "ct"), 1, slices=2, size=128, angles=180, seed=1)
store_url = os.path.join(work, "recon.zarr")
radflow.ingest(raw, store_url, settings={"cluster": {"n_workers": 1}})
out = radflow.process(store_url, steps=["reconstruct"], settings={"cluster": {"n_workers": 1}})
out["steps"]["reconstruct"]'''),
        ("code", '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

store = radflow.open_store(store_url)
qc = store.features()
k, s = store.kspace().iloc[0], store.sinograms().iloc[0]
pairs = [("MRI (RSS of 4 coils)", store.kspace_slice(int(k.kspace_index), recon=True),
          store.kspace_slice(int(k.kspace_index), reference=True)),
         ("CT (filtered back-projection)", store.sinogram_slice(int(s.sinogram_index), recon=True),
          store.sinogram_slice(int(s.sinogram_index), reference=True))]
fig, axes = plt.subplots(2, 3, figsize=(11, 7))
for row, (name, recon, ref) in zip(axes, pairs):
    row[0].imshow(recon, cmap="gray"); row[0].set_title(f"{name}: radflow")
    row[1].imshow(ref, cmap="gray"); row[1].set_title("reference")
    row[2].imshow(recon - ref, cmap="coolwarm"); row[2].set_title("difference")
    for ax in row:
        ax.axis("off")
fig.tight_layout()
qc[qc["kind"] != "image"][["kind", "nmse", "psnr", "ssim"]]'''),
        ("md", "The kernels are plain functions too (NumPy, torch or CuPy arrays in, the same kind out):"),
        ("code", '''import numpy as np
from skimage.transform import iradon, radon
from radflow.synth.kspace import shepp_logan
from radflow.tasks.recon import fbp
from radflow.tasks.quality import psnr

phantom = shepp_logan(256)
theta = np.linspace(0.0, 180.0, 360, endpoint=False)
sino = radon(phantom, theta)
ours, theirs = fbp(sino, theta, output_size=256), iradon(sino, theta, output_size=256)
{"radflow fbp PSNR": round(float(psnr(phantom, ours)), 2), "skimage iradon PSNR": round(float(psnr(phantom, theirs)), 2)}'''),
    ],
}


CLEANUP = ("code", "import shutil\nshutil.rmtree(work, ignore_errors=True)  # this notebook's synthetic archive and stores")


def build() -> dict[str, nbformat.NotebookNode]:
    out = {}
    for name, cells in NOTEBOOKS.items():
        cells = [*cells, CLEANUP]
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for i, (kind, src) in enumerate(cells):
            cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
            cell["id"] = f"{name.split('_')[0]}-{i:02d}"
            nb.cells.append(cell)
        out[name] = nb
    return out


if __name__ == "__main__":
    for name, nb in build().items():
        nbformat.write(nb, os.path.join(HERE, name))
        print("wrote", name)
