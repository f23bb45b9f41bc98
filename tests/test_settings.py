"""Every setting and argument checked before anything starts: a mistake names what the user typed,
nothing is created on disk, and neither Prefect nor Dask is imported (so it reports at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

GOOD_KEY = "0123456789abcdef0123456789abcdef-test"

#: (arguments, extra environment, text the one-line error must contain)
MISTAKES = [
    (["ingest", "{src}", "{out}"], {"RADFLOW_SECRET_KEY": ""}, "RADFLOW_SECRET_KEY holds no key"),
    (["ingest", "{src}", "{out}"], {"RADFLOW_SECRET_KEY": "too-short"}, "at least 32 bytes"),
    (["ingest", "{src}", "{out}"], {"RADFLOW_CLUSTER__N_WORKERS": "-3"}, "RADFLOW_CLUSTER__N_WORKERS"),
    (["ingest", "{src}", "{out}"], {"RADFLOW_LIMITS__MAX_FRAME_PIXELS": "-1"}, "RADFLOW_LIMITS__MAX_FRAME_PIXELS"),
    (["ingest", "{src}", "{out}"], {"RADFLOW_LIMITS__MAX_FILE_BYTES": "0"}, "RADFLOW_LIMITS__MAX_FILE_BYTES"),
    (["ingest", "{src}", "{out}"], {"RADFLOW_LIMITS__MAX_COMPRESSION_RATIO": "-1"}, "RADFLOW_LIMITS__MAX_COMPRESSION_RATIO"),
    (["ingest", "{src}", "{out}", "--workers", "-1"], {}, "--workers"),
    (["ingest", "{src}", "{out}", "--workers", "0"], {}, "--workers"),
    (["ingest", "{src}", "{out}", "--shard-mib", "0"], {}, "--shard-mib"),
    (["ingest", "{missing}", "{out}"], {}, "SOURCE"),
    (["process", "{out}"], {}, "no radflow store at STORE"),
    (["process", "{store}", "--canvas", "100000"], {}, "--canvas"),
    (["process", "{store}", "--canvas", "0"], {}, "--canvas"),
    (["process", "{store}", "--steps", "preprocess,infere"], {}, "--steps"),
    (["process", "{store}", "--model", "{missing}"], {}, "--model"),
    (["evaluate", "{store}", "--labels", "{missing}"], {}, "--labels"),
    (["evaluate", "{store}", "--labels", "{src}/x.csv", "--threshold", "nan"], {}, "--threshold"),
    (["evaluate", "{store}", "--labels", "{src}/x.csv", "--threshold", "5"], {}, "--threshold"),
]

PROBE = """
import sys
from radflow.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("prefect", "distributed", "torch") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("args, env, expected", MISTAKES, ids=[" ".join(m[0][:1] + [k for k in m[1]] + m[0][3:]) for m in MISTAKES])
def test_mistake_is_reported_before_anything_starts(tmp_path, args, env, expected):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.csv").write_text("sop_instance_uid,effusion\n1.2.3,1\n")
    store = tmp_path / "store.zarr"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    names = {"src": str(src), "out": str(tmp_path / "new.zarr"), "missing": str(tmp_path / "missing"), "store": str(store)}
    full_env = {**os.environ, "RADFLOW_SECRET_KEY": GOOD_KEY, **env}
    proc = subprocess.run([sys.executable, "-c", PROBE, *[a.format(**names) for a in args]], capture_output=True,
                          text=True, timeout=120, env=full_env, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("HEAVY=")]
    assert proc.returncode in (1, 2), proc.stderr
    assert any(expected in line for line in lines), proc.stderr
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert proc.returncode == 2 or heavy == ["HEAVY="], proc.stderr  # argparse exits 2 before the probe line
    assert not (tmp_path / "new.zarr").exists()  # nothing created
    for secret in (GOOD_KEY, env.get("RADFLOW_SECRET_KEY") or GOOD_KEY):
        assert secret not in proc.stderr  # a key's value is never shown


def test_unknown_radflow_variable_is_a_warning():
    from radflow.config import unknown_environment

    env = {"RADFLOW_CANVS": "512", "RADFLOW_CANVAS": "512", "RADFLOW_LIMITS__MAX_FRAMES": "9",
           "RADFLOW_CLUSTER__KUBERNETES__IMAGE": "x", "RADFLOW_LIMIT__MAX_FRAMES": "9", "OTHER": "1"}
    assert unknown_environment(env) == ["RADFLOW_CANVS", "RADFLOW_LIMIT__MAX_FRAMES"]


def test_key_file_too_short_is_refused(tmp_path):
    from radflow.config import Settings, resolve_secret_key

    key_file = tmp_path / "k"
    key_file.write_text("abc")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        resolve_secret_key(Settings(secret_key=None, key_file=key_file))
    created = tmp_path / "new" / "secret.key"
    assert len(resolve_secret_key(Settings(secret_key=None, key_file=created))) >= 32


def test_cli_steps_are_the_process_flows_steps():
    from radflow.cli_checks import STEPS
    from radflow.flows.process import STEPS as FLOW_STEPS

    assert STEPS == FLOW_STEPS


def test_prefect_gets_a_startup_timeout_that_fits_a_loaded_machine_unless_the_user_set_one():
    import os
    import subprocess
    import sys

    code = "import radflow, prefect.settings as s; print(s.get_current_settings().server.ephemeral.startup_timeout_seconds)"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7"})
    assert float(default.stdout) == 180 and float(chosen.stdout) == 7


def test_threaded_steps_alone_get_one_worker_with_every_core(monkeypatch):
    """One copy of the model (and of torch) whose forward passes use every core, rather than one per core, and
    one copy of preprocessing's imports; left alone where the user shaped the cluster or other steps run too."""
    from radflow.config import cluster_for_steps

    for key in ("N_WORKERS", "THREADS_PER_WORKER", "ADDRESS", "KIND"):
        monkeypatch.delenv(f"RADFLOW_CLUSTER__{key}", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cluster_for_steps(["infer"], None) == {"cluster": {"n_workers": 1, "threads_per_worker": cores}}
    assert cluster_for_steps(["infer"], {"infer_batch": 8, "cluster": {"memory_limit": "4GB"}}) == {
        "infer_batch": 8, "cluster": {"memory_limit": "4GB", "n_workers": 1, "threads_per_worker": cores}}
    assert cluster_for_steps(["preprocess", "features", "infer"], None) == {"cluster": {"n_workers": 1, "threads_per_worker": cores}}
    assert cluster_for_steps(["preprocess", "reconstruct"], None) is None
    assert cluster_for_steps(["infer"], {"cluster": {"n_workers": 3}}) == {"cluster": {"n_workers": 3}}
    assert cluster_for_steps(["infer"], None, address="tcp://127.0.0.1:8786") is None
    monkeypatch.setenv("RADFLOW_CLUSTER__THREADS_PER_WORKER", "2")
    assert cluster_for_steps(["infer"], None) is None


def test_a_small_store_gets_images_shards_enough_for_every_worker():
    from radflow.stages.preprocess import SPREAD, shard_frames

    chunk, chunk_bytes = 32, 32 * 512 * 512 * 2  # 16 MiB chunks: the 128 MiB target is 8 chunks
    assert shard_frames(300, chunk, chunk_bytes, 128) == 32  # 10 shards, not 2 (one per range)
    assert shard_frames(377_110, chunk, chunk_bytes, 128) == 256  # an archive: the target
    assert shard_frames(10, chunk, chunk_bytes, 128) == 32  # never less than a chunk
    assert shard_frames(SPREAD * 64, chunk, chunk_bytes, 128) == 64


@pytest.mark.timeout(240)
def test_the_ingest_command_and_its_workers_never_import_torch(tmp_path):
    """``radflow ingest`` runs no model: torch (seconds of CPU and hundreds of MB per process) is not imported
    by the command, nor by what its workers import to run its tasks (the modules they start with)."""
    from radflow.synth import write_archive

    archive = write_archive(tmp_path / "archive", 3, seed=1, sizes=((64, 64),), broken=False)
    env = {**os.environ, "RADFLOW_SECRET_KEY": GOOD_KEY, "RADFLOW_CLUSTER__N_WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, "ingest", archive.dicom, str(tmp_path / "s.zarr")],
                          capture_output=True, text=True, timeout=200, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy and "torch" not in heavy[-1] and "prefect" in heavy[-1], proc.stderr[-3000:]  # (the probe works)

    from radflow.flows._api import WORKER_MODULES

    modules = ("radflow.cluster.sealed", *WORKER_MODULES["radflow.flows.ingest"])
    worker = subprocess.run([sys.executable, "-c", f"import sys\nfor m in {modules!r}: __import__(m)\n"
                             "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert worker.returncode == 0 and worker.stdout.strip() == "[]", worker.stderr[-2000:]
