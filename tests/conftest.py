"""Shared fixtures: a real local Dask cluster, Prefect's test harness, a moto S3 server,
and synthetic archives made in code. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["RADFLOW_SECRET_KEY"] = "radflow-test-key-of-at-least-32-bytes"
# the tests' flow runs go to their own Prefect home, never the user's ~/.prefect; removed at the end. Each
# pytest-xdist worker gets one of its own (a home made here for the controlling process is not shared)
_HOME_PREFIX = "radflow-tests-prefect-"
if os.path.basename(os.environ.get("PREFECT_HOME") or _HOME_PREFIX).startswith(_HOME_PREFIX):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=_HOME_PREFIX)
_PREFECT_HOME = os.environ["PREFECT_HOME"]


def pytest_sessionfinish(session, exitstatus):
    if os.path.basename(_PREFECT_HOME).startswith(_HOME_PREFIX):
        from radflow.flows._kept_api import stop_kept

        stop_kept(_PREFECT_HOME)  # the local API the tests' commands kept up (it would stop once its home is gone)
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)

import pytest

TEST_SIZES = ((512, 512), (600, 480), (1024, 768))


def pytest_collection_modifyitems(config, items):
    from tests.helpers import has_gpu

    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's test harness: a temporary local API for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster of two worker processes on loopback; flows reuse it."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """24 synthetic radiographs (small sizes) plus 3 broken files."""
    from radflow.synth import write_archive

    root = tmp_path_factory.mktemp("archive")
    return write_archive(root, 24, seed=3, sizes=TEST_SIZES)


@pytest.fixture(scope="session")
def pydicom_test_files():
    import pydicom

    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port; AWS_* points at it for the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    })
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
