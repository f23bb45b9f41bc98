"""The whole pipeline on a real `dask scheduler` with two `dask worker` processes started here
(plain TCP and TLS), and the Kubernetes cluster spec built from settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import radflow
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _dask(*args, log, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


class _Cluster:
    """``dask scheduler`` and ``n`` ``dask worker`` processes on loopback."""

    def __init__(self, tmp_path, n: int = 2, tls: dict[str, str] | None = None) -> None:
        self.port = free_port()
        proto = "tls" if tls else "tcp"
        self.address = f"{proto}://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"dask-{proto}.log", "wb")
        sec = []
        if tls:
            sec = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 2**20)}
        self.procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--protocol", proto,
                            "--dashboard-address", "127.0.0.1:0", *sec, log=self.log)]
        for i in range(n):
            self.procs.append(_dask("worker", self.address, "--nthreads", "1", "--host", "127.0.0.1",
                                    "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}",
                                    "--local-directory", str(tmp_path / f"w{i}"), *sec, log=self.log, env=env))
        self.n = n

    def wait(self, security=None) -> None:
        from distributed import Client

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with Client(self.address, timeout=5, security=security, set_as_default=False) as c:
                    c.wait_for_workers(self.n, timeout=60)
                    return
            except OSError:
                time.sleep(1)
        raise TimeoutError("dask cluster did not start")

    def executed(self, security=None) -> dict[str, int]:
        from distributed import Client

        with Client(self.address, security=security, set_as_default=False) as c:
            return c.run(lambda dask_worker: dask_worker.state.executed_count)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def _model(path: str) -> str:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1))
    torch.jit.script(net).save(path)
    return path


def test_pipeline_on_dask_scheduler_and_two_dask_workers(tmp_path, small_archive, prefect_api, dask_client):
    cluster = _Cluster(tmp_path)
    try:
        cluster.wait()
        store = str(tmp_path / "ext.zarr")
        summary = radflow.ingest(small_archive.dicom, store, cluster=cluster.address,
                                 settings={"shard_target_mib": 2, "header_files_per_task": 4})
        out = radflow.process(store, steps=["preprocess", "infer", "features"], canvas=64, cluster=cluster.address,
                              model=_model(str(tmp_path / "m.pt")))
        executed = cluster.executed()
    finally:
        cluster.stop()
    st = radflow.open_store(store)
    assert summary["ok"] == len(set(st.instances()["source"])) > 0
    assert out["steps"]["infer"]["frames"] == len(st.instances()) == len(st.predictions())
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed  # both workers ran radflow's tasks
    assert radflow.verify(store, cluster=None)["problems"] == []
    # the same archive on the in-process test cluster gives the same store content
    local = str(tmp_path / "local.zarr")
    radflow.ingest(small_archive.dicom, local, settings={"shard_target_mib": 2, "header_files_per_task": 4})
    radflow.process(local, steps=["preprocess", "infer", "features"], canvas=64, model=str(tmp_path / "m.pt"))
    a, b = radflow.digest(store), radflow.digest(local)
    assert {k: v for k, v in a.items() if k != "attrs" and k != "store"} == {k: v for k, v in b.items() if k not in ("attrs", "store")}


def test_tls_scheduler(tmp_path, prefect_api, dask_client):
    from distributed.security import Security

    from radflow.synth import write_archive

    sec = Security.temporary()
    files = {}
    for name, pem in (("ca", sec.tls_ca_file), ("cert", sec.tls_client_cert), ("key", sec.tls_client_key)):
        files[name] = str(tmp_path / f"{name}.pem")
        with open(files[name], "w") as fh:
            fh.write(pem)
    client_sec = Security(tls_ca_file=files["ca"], tls_client_cert=files["cert"], tls_client_key=files["key"],
                          require_encryption=True)
    cluster = _Cluster(tmp_path, n=1, tls=files)
    try:
        cluster.wait(security=client_sec)
        a = write_archive(tmp_path / "a", 3, seed=3, sizes=((512, 512),), broken=False)
        tls = {"tls_ca_file": files["ca"], "tls_cert": files["cert"], "tls_key": files["key"]}
        summary = radflow.ingest(a.dicom, str(tmp_path / "tls.zarr"), cluster=cluster.address, settings={"cluster": tls})
        executed = cluster.executed(security=client_sec)
        from radflow.errors import ConfigError

        with pytest.raises(ConfigError, match="TLS needs all"):
            radflow.ingest(a.dicom, str(tmp_path / "x.zarr"), cluster=cluster.address,
                           settings={"cluster": {"tls_ca_file": files["ca"]}})
    finally:
        cluster.stop()
    assert summary["ok"] == 3 and sum(executed.values()) > 0


def test_kubernetes_cluster_spec():
    import yaml

    from radflow.cluster.kubernetes import cluster_spec
    from radflow.config import ClusterSettings

    spec = cluster_spec(ClusterSettings(kind="kubernetes", n_workers=8, threads_per_worker=2,
                                        kubernetes={"image": "registry.example/radflow:1", "worker_gpus": 1,
                                                    "secret_name": "radflow-env", "node_selector": {"gpu": "a100"}}))
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]
    c = worker["spec"]["containers"][0]
    assert worker["replicas"] == 8 and c["image"] == "registry.example/radflow:1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and "GPU=1" in c["args"]
    assert c["args"][c["args"].index("--nthreads") + 1] == "2"
    assert c["envFrom"] == [{"secretRef": {"name": "radflow-env"}}] and worker["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert spec["spec"]["scheduler"]["service"]["ports"][0]["port"] == 8786
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec
    out = subprocess.run([sys.executable, "-m", "radflow", "k8s-spec", "--workers", "3"], capture_output=True, text=True,
                         check=True).stdout
    assert yaml.safe_load(out)["spec"]["worker"]["replicas"] == 3
