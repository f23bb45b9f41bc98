"""A Dask cluster on Kubernetes: the ``DaskCluster`` resource of the Dask operator, built from settings.

``cluster_spec`` is pure data (``radflow k8s-spec`` prints it as YAML for ``kubectl apply``);
``connect`` with ``kind="kubernetes"`` hands it to ``dask_kubernetes.operator.KubeCluster``,
which creates the scheduler and worker pods and removes them when the run ends.
"""

from __future__ import annotations

from typing import Any

from radflow.config import ClusterSettings

__all__ = ["cluster_spec"]


def cluster_spec(settings: ClusterSettings) -> dict[str, Any]:
    """The ``kubernetes.dask.org/v1`` ``DaskCluster`` for ``settings`` (workers: ``n_workers``,
    default 2; threads per worker: ``threads_per_worker``; resources and image from
    ``settings.kubernetes``)."""
    k = settings.kubernetes
    env_from = [{"secretRef": {"name": k.secret_name}}] if k.secret_name else []
    env = [{"name": name, "value": value} for name, value in sorted(settings.worker_env.items())]
    resources: dict[str, Any] = {"cpu": k.worker_cpu, "memory": k.worker_memory}
    if k.worker_gpus:
        resources["nvidia.com/gpu"] = str(k.worker_gpus)
    worker_args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", str(settings.threads_per_worker),
                   "--memory-limit", "0" if settings.memory_limit == "auto" else settings.memory_limit,
                   "--dashboard", "--dashboard-address", "8788"]
    if k.worker_gpus:
        worker_args += ["--resources", f"GPU={k.worker_gpus}"]
    worker_pod: dict[str, Any] = {
        "containers": [{
            "name": "worker", "image": k.image, "imagePullPolicy": "IfNotPresent", "args": worker_args,
            "env": env, "envFrom": env_from, "resources": {"requests": resources, "limits": resources},
            "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        }],
    }
    if k.node_selector:
        worker_pod["nodeSelector"] = dict(k.node_selector)
    scheduler_pod = {
        "containers": [{
            "name": "scheduler", "image": k.image, "imagePullPolicy": "IfNotPresent",
            "args": ["dask", "scheduler", "--port", "8786", "--dashboard-address", ":8787"],
            "envFrom": env_from,
            "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                      {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "initialDelaySeconds": 0,
                               "periodSeconds": 1, "timeoutSeconds": 300},
            "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "initialDelaySeconds": 15,
                              "periodSeconds": 20},
        }],
    }
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": k.name, "dask.org/component": "scheduler"},
        "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                  {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"}],
    }
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": k.name, "namespace": k.namespace, "labels": {"app.kubernetes.io/part-of": "radflow"}},
        "spec": {
            "worker": {"replicas": settings.n_workers or 2, "spec": worker_pod},
            "scheduler": {"spec": scheduler_pod, "service": service},
        },
    }
